"""qcompile: an ONNX quantization compiler (FP32 ONNX + calibration data -> INT8 ONNX that ORT runs fast)."""

from qcompile.api import CompileResult, compile_model
from qcompile.config import CompileConfig
from qcompile.errors import QCompileError
from qcompile.version import __version__

__all__ = ["compile_model", "CompileConfig", "CompileResult", "QCompileError", "__version__"]
