"""qcompile: an ONNX quantization compiler (FP32 ONNX + calibration data -> INT8 ONNX that ORT runs fast)."""

__version__ = "0.1.0"

from qcompile.config import CompileConfig  # noqa: E402
from qcompile.errors import QCompileError  # noqa: E402


def compile_model(model, calib, config=None, *, progress=False, eval_data=None, metric=None):
    """Quantise ``model`` (path, bytes or ModelProto) with ranges from ``calib``; see qcompile.api."""
    from qcompile.api import compile_model as _compile_model
    return _compile_model(model, calib, config, progress=progress, eval_data=eval_data, metric=metric)


__all__ = ["compile_model", "CompileConfig", "QCompileError", "__version__"]
