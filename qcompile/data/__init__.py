"""User data: calibration sources, their validation, shards for distributed calibration, held-out eval data.

specs.py (what each model input expects), validate.py (the checks and dtype rules), samples.py (rows and the
``num_samples`` cap), readers.py (folders, .npz/.npy, images), source.py (``open_calibration_source``),
shards.py (``plan_shards``, ``open_calibration_shard``), eval_data.py (``load_eval_data``).
"""

from qcompile.data.eval_data import EvalData, load_eval_data
from qcompile.data.shards import CalibrationShard, open_calibration_shard, plan_shards
from qcompile.data.source import CalibrationSource, open_calibration_source
from qcompile.data.specs import Feed, InputSpec, model_input_specs

__all__ = ["InputSpec", "Feed", "model_input_specs", "CalibrationSource", "open_calibration_source",
           "CalibrationShard", "plan_shards", "open_calibration_shard", "EvalData", "load_eval_data"]
