"""Fusion check: what ONNX Runtime actually made of the nodes qcompile quantized.

A QDQ model is only fast if ORT's graph transformers fold each DQ -> op -> Q group into an integer kernel. This
module builds a session with optimisation level ALL, lets ORT write the optimised graph
(``optimized_model_filepath``, initializers written externally so the file read back stays small and is parsed
with ``ModelProto.FromString``; no data is loaded), and maps every quantized node name to the op type of the
optimised node that now computes it.

What ORT 1.32 (CPU EP, x86-64 with AVX512-VNNI) was observed to do (see tests/runtime_ext/test_fusion.py):

============================================  ==========================================================
original (names as in the test models)        optimised graph
============================================  ==========================================================
DQ(u8 act), DQ(s8 w) -> Conv 'conv0' -> Q     Transpose -> QLinearConv (com.microsoft, NHWC)
                                              named 'conv0_token_<k>' whose output is a NEW tensor, then
                                              Transpose -> the old Q output; Q/DQ pair on the activation
                                              removed, the input Q kept. At level EXTENDED: ONNX-domain
                                              QLinearConv named 'conv0' writing the Q's output.
DQ, DQ(w) -> MatMul 'mm0' -> Q                QLinearMatMul named 'mm0', writing the Q's output tensor
DQ, DQ(w) -> MatMul 'mm0' (float out)         MatMulIntegerToFloat (com.microsoft) named 'mm0', same output
DQ, DQ(w), DQ(int32 b) -> Gemm 'gemm0' -> Q   QGemm (com.microsoft) named 'gemm0' (also for float output)
DQ(int4/int8 const, blocked or per-tensor)    MatMulNBits named like the MatMul; weights '<w>_T'; a plain
  -> MatMul (weight-only)                     int8 per-tensor DQ -> MatMul becomes MatMulNBits bits=8,
                                              block_size=32, accuracy_level=4
float Conv (+Relu)                            Conv in domain com.microsoft.nchwc named '<output>_nchwc'
                                              (named after the OUTPUT tensor) + ReorderOutput
float MatMul + Add / MatMul * s               Gemm '/MatMulAddFusion', FusedMatMul '/MatMulScaleFusion/'
int8 (signed) activations on x86              QDQS8ToU8Transformer rewrites the activation Q/DQ to uint8
                                              (zero point + 128, tensors 'qdq_s8_to_u8_*') and then fuses
                                              exactly as for uint8 (QLinearConv / QLinearMatMul / QGemm /
                                              MatMulIntegerToFloat, u8s8). Output tensor names change.
                                              Session entry ``session.qdqisint8allowed=1`` keeps s8s8.
============================================  ==========================================================

How each quantized node is found in the optimised graph: runtime_ext/fusion_match.py.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from qcompile.errors import UnsupportedModelError
from qcompile.runtime_ext.fusion_match import INTEGER_KERNELS, REMOVED, GraphIndex, kernel_of_nodes
from qcompile.runtime_ext.session import GraphOptimization, make_session

__all__ = ["INTEGER_KERNELS", "REMOVED", "FusionReport", "check_fusion", "kernel_of_nodes"]

logger = logging.getLogger(__name__)

_EXTERNAL_MIN_BYTES = 1024


@dataclass(frozen=True)
class FusionReport:
    """What ORT's optimiser made of the quantized nodes.

    node_kernels: quantized node name -> op type of the optimised node computing it (``REMOVED`` if none).
    unfused: quantized nodes whose kernel is not in ``INTEGER_KERNELS``, in the order given.
    leftover_qdq: QuantizeLinear + DequantizeLinear nodes left in the optimised graph (subgraphs included).
    leftover_dq_on_constants: of those, DequantizeLinear nodes reading an initializer / Constant (weights
        that stayed float math: dequantized at run time every call).
    optimized_op_counts: op type -> count in the optimised graph (subgraphs included).
    unfused_qdq_pairs: "Q -> DQ on tensor" for each QuantizeLinear whose output a DequantizeLinear reads in the
        optimised graph: a round trip through integers around float math, slower than FP32 and no smaller.
    """

    node_kernels: Mapping[str, str]
    unfused: tuple[str, ...]
    leftover_qdq: int
    leftover_dq_on_constants: int
    optimized_op_counts: Mapping[str, int] = field(default_factory=dict)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    unfused_qdq_pairs: tuple[str, ...] = ()

    @property
    def fused(self) -> tuple[str, ...]:
        unfused = set(self.unfused)
        return tuple(n for n in self.node_kernels if n not in unfused)

    @property
    def all_fused(self) -> bool:
        return not self.unfused

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (plain str/int/list/dict), for the compile report."""
        return {
            "providers": list(self.providers),
            "node_kernels": dict(self.node_kernels),
            "unfused": list(self.unfused),
            "num_quantized": len(self.node_kernels),
            "num_fused": len(self.node_kernels) - len(self.unfused),
            "leftover_qdq": self.leftover_qdq,
            "leftover_dq_on_constants": self.leftover_dq_on_constants,
            "optimized_op_counts": dict(sorted(self.optimized_op_counts.items())),
            "unfused_qdq_pairs": list(self.unfused_qdq_pairs),
        }


def _qdq_counts(opt: GraphIndex) -> tuple[int, int]:
    qdq = dq_const = 0
    for node in opt.nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qdq += 1
            if node.op_type == "DequantizeLinear" and node.input and node.input[0] in opt.constants:
                dq_const += 1
    return qdq, dq_const


def _unfused_qdq_pairs(opt: GraphIndex) -> tuple[str, ...]:
    """Each QuantizeLinear -> DequantizeLinear edge left in the optimised graph (see FusionReport)."""
    pairs = []
    for node in opt.nodes:
        if node.op_type != "QuantizeLinear" or not node.output:
            continue
        for reader in opt.consumers.get(node.output[0], ()):
            if reader.op_type == "DequantizeLinear":
                pairs.append(f"{node.name or '?'} -> {reader.name or '?'} on {node.input[0] if node.input else '?'}")
    return tuple(pairs)


_INTEGER_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
                            onnx.TensorProto.UINT4})


def _integer_gathers(model: onnx.ModelProto) -> set[str]:
    """Gathers reading an integer constant table (quantised embeddings): they move integers, as intended."""
    tables = {t.name for t in model.graph.initializer if t.data_type in _INTEGER_TYPES}
    return {n.name for n in model.graph.node if n.op_type == "Gather" and n.input and n.input[0] in tables}


def check_fusion(
    model: onnx.ModelProto,
    quantized_nodes: Sequence[str],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    config_entries: Mapping[str, str] | None = None,
) -> FusionReport:
    """Let ORT optimise ``model`` (level ALL) on ``providers`` and report the kernel of each quantized node.

    config_entries: extra session entries, e.g. ``{"session.qdqisint8allowed": "1"}`` to check what a target
    that allows s8s8 gets. Raises ConfigError / ModelLoadError / UnsupportedModelError like make_session.
    """
    quantized_nodes = list(quantized_nodes)
    entries = {
        "session.optimized_model_external_initializers_file_name": "optimized.onnx.data",
        "session.optimized_model_external_initializers_min_size_in_bytes": str(_EXTERNAL_MIN_BYTES),
    }
    entries.update(config_entries or {})
    with tempfile.TemporaryDirectory(prefix="qcompile-fusion-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        make_session(
            model,
            providers=providers,
            threads=1,
            optimization=GraphOptimization.ALL,
            optimized_model_path=out,
            config_entries=entries,
        )
        if not out.is_file():
            raise UnsupportedModelError(
                f"onnxruntime wrote no optimised model for the fusion check (providers: {', '.join(providers)})"
            )
        optimized = onnx.ModelProto.FromString(out.read_bytes())

    kernels = kernel_of_nodes(model, optimized, quantized_nodes)
    opt = GraphIndex(optimized.graph)
    leftover_qdq, dq_const = _qdq_counts(opt)
    counts = Counter(n.op_type for n in opt.nodes)
    integer_gathers = _integer_gathers(model)
    unfused = tuple(name for name, op in kernels.items()
                    if op not in INTEGER_KERNELS and not (op == "Gather" and name in integer_gathers))
    if unfused:
        logger.info("fusion check: %d of %d quantized nodes unfused: %s", len(unfused), len(kernels),
                    ", ".join(f"{n} ({kernels[n]})" for n in unfused[:10]))
    return FusionReport(
        node_kernels=kernels,
        unfused=unfused,
        leftover_qdq=leftover_qdq,
        leftover_dq_on_constants=dq_const,
        optimized_op_counts=dict(counts),
        providers=tuple(providers),
        unfused_qdq_pairs=_unfused_qdq_pairs(opt),
    )
