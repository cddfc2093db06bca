"""Float16 for the float remainder of the graph, float32 at its edges (targets with ``float16``: CUDA).

For a graph G with float32 inputs x and outputs y, the pass emits

    y = Cast₃₂( G₁₆( Cast₁₆(x) ) )

where G₁₆ is G with every float32 constant c replaced by fp16(clip(c, -65504, 65504)) (the largest finite
float16; an unclipped -3.4e38 attention-mask constant would become -inf and 0·(-inf) = NaN), every
``Cast(to=float)`` and float32 ``ConstantOfShape`` value retargeted to float16, and every float32
intermediate tensor typed float16. The user's I/O stays float32.

Ops in ``profile.float32_ops`` (no float16 kernel on the target) keep float32: each float input is
Cast₃₂ before them and each float output Cast₁₆ after them. Inputs whose ONNX type is float32 whatever the
data type (Resize's ``scales``, Upsample's ``scales``) keep their float32 constants.

Numerically, each float16 value carries a relative rounding error of at most 2⁻¹¹ ≈ 4.9e-4 (normal range);
an output after L layers differs from float32 by O(L·2⁻¹¹) relative, which tests bound on real models.

Graphs with If/Loop/Scan bodies are left float32 (bodies read outer-scope tensors whose type would change);
the pass says so in its stats.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompile.graph.edits import replace_uses, substitute
from qcompile.graph.scopes import has_subgraphs
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult

logger = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)   # 65504
# (op, input index) whose type is float32 by the op's schema, whatever the data type
FLOAT32_ONLY_INPUTS = frozenset({("Resize", 2), ("Upsample", 1)})
_FLOAT = onnx.TensorProto.FLOAT
_FLOAT16 = onnx.TensorProto.FLOAT16


def to_float16(values: np.ndarray) -> np.ndarray:
    """float32 -> float16 with finite values clipped to ±65504 (infinities and NaN kept as they are)."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    clipped = np.where(finite, np.clip(values, -FLOAT16_MAX, FLOAT16_MAX), values)
    return clipped.astype(np.float16)


def _is_float32(tensor: gs.Tensor) -> bool:
    dtype = getattr(tensor, "dtype", None)
    if dtype is None:
        return False
    try:
        return np.dtype(dtype) == np.float32
    except TypeError:
        return False


@dataclass(frozen=True)
class _KeptNodes:
    """The nodes that stay float32, with their float32 input/output slots recorded before anything is retyped."""

    nodes: tuple[gs.Node, ...]
    inputs: dict[int, list[int]]
    outputs: dict[int, list[int]]

    @classmethod
    def record(cls, nodes: list[gs.Node]) -> _KeptNodes:
        return cls(tuple(nodes), {id(n): [i for i, t in enumerate(n.inputs) if _is_float32(t)] for n in nodes},
                   {id(n): [i for i, t in enumerate(n.outputs) if _is_float32(t)] for n in nodes})

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(id(n) for n in self.nodes)


def _convert_constants(graph: gs.Graph, kept_ids: frozenset[int], stats: Counter) -> None:
    """c -> fp16(clip(c)): one float16 copy per constant, read by every converted consumer."""
    converted: dict[int, gs.Constant] = {}
    for node in graph.nodes:
        if id(node) in kept_ids:
            continue
        for index, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant) or (node.op, index) in FLOAT32_ONLY_INPUTS:
                continue
            if tensor.values.dtype != np.float32:
                continue
            if id(tensor) not in converted:
                converted[id(tensor)] = gs.Constant(f"{tensor.name}_fp16", to_float16(tensor.values))
                stats["constants"] += 1
            node.inputs[index] = converted[id(tensor)]


def _retarget_float_attributes(graph: gs.Graph, kept_ids: frozenset[int], stats: Counter) -> None:
    """Attributes that make float32 values: Cast(to=float) and a float32 ConstantOfShape value."""
    for node in graph.nodes:
        if id(node) in kept_ids:
            continue
        if node.op == "Cast" and node.attrs.get("to") == _FLOAT:
            node.attrs["to"] = _FLOAT16
            stats["casts_retargeted"] += 1
        elif node.op == "ConstantOfShape" and isinstance(node.attrs.get("value"), gs.Constant) \
                and node.attrs["value"].values.dtype == np.float32:
            value = node.attrs["value"]
            node.attrs["value"] = gs.Constant(f"{value.name}_fp16", to_float16(value.values))
            stats["constant_of_shape"] += 1


def _retype_intermediates(graph: gs.Graph, stats: Counter) -> None:
    """Every float32 tensor that is not a graph input or output is now float16."""
    graph_io = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in graph_io and _is_float32(tensor):
            tensor.dtype = np.float16
            stats["tensors_retyped"] += 1


def _cast_inputs(graph: gs.Graph, kept_ids: frozenset[int], stats: Counter) -> None:
    """A float32 graph input x: its converted consumers read Cast₁₆(x)."""
    for tensor in graph.inputs:
        if _is_float32(tensor) and tensor.outputs:
            half = gs.Variable(f"{tensor.name}_fp16", dtype=np.float16, shape=tensor.shape)
            replace_uses(tensor, half, [c for c in tensor.outputs if id(c) not in kept_ids])
            graph.nodes.append(gs.Node("Cast", name=f"{tensor.name}_to_fp16", attrs={"to": _FLOAT16},
                                       inputs=[tensor], outputs=[half]))
            stats["input_casts"] += 1


def _cast_around_kept(graph: gs.Graph, kept: _KeptNodes, stats: Counter) -> None:
    """A kept node reads Cast₃₂ of its float16 inputs and its float32 outputs are Cast₁₆ for their readers."""
    for node in kept.nodes:
        for index in kept.inputs[id(node)]:
            tensor = node.inputs[index]
            if tensor in graph.inputs or isinstance(tensor, gs.Constant):
                continue   # still float32
            full = gs.Variable(f"{tensor.name}_fp32_{node.name}", dtype=np.float32, shape=tensor.shape)
            graph.nodes.append(gs.Node("Cast", name=f"{node.name}_in{index}_to_fp32", attrs={"to": _FLOAT},
                                       inputs=[tensor], outputs=[full]))
            node.inputs[index] = full
            stats["kept_float32_casts"] += 1
        for index in kept.outputs[id(node)]:
            tensor = node.outputs[index]
            if tensor in graph.outputs:
                continue   # stays float32 for the user
            full = gs.Variable(f"{tensor.name}_fp32", dtype=np.float32, shape=tensor.shape)
            node.outputs[index] = full
            graph.nodes.append(gs.Node("Cast", name=f"{node.name}_out{index}_to_fp16",
                                       attrs={"to": _FLOAT16}, inputs=[full], outputs=[tensor]))
            stats["kept_float32_casts"] += 1
        stats[f"kept_float32_{node.op}"] += 1


def _cast_outputs(graph: gs.Graph, kept_ids: frozenset[int], stats: Counter) -> None:
    """A float32 graph output y: its producer writes a float16 tensor, a Cast₃₂ writes y."""
    for tensor in list(graph.outputs):
        if not _is_float32(tensor) or not tensor.inputs:
            continue
        producer = tensor.inputs[0]
        if id(producer) in kept_ids:
            continue
        half = gs.Variable(f"{tensor.name}_fp16", dtype=np.float16, shape=tensor.shape)
        substitute(producer.outputs, tensor, half)
        replace_uses(tensor, half)   # an output also read inside the graph
        graph.nodes.append(gs.Node("Cast", name=f"{tensor.name}_to_fp32", attrs={"to": _FLOAT},
                                   inputs=[half], outputs=[tensor]))
        stats["output_casts"] += 1


class ConvertFloat16Pass(GraphPass):
    """The float remainder to float16 with float32 I/O, when the target profile asks for it."""

    requires = frozenset({GraphProperty.QUANTIZED})      # it converts what the quantize step left float
    invalidates = frozenset()      # tensors are retyped, not left unannotated

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        profile = ctx.target
        if not profile.float16:
            return PassResult(modified=False, stats={"skipped_target_keeps_float32": 1})
        if has_subgraphs(graph):
            message = "float16 conversion skipped: the graph has If/Loop/Scan bodies; the model stays float32"
            logger.warning(message)
            ctx.warnings.append(message)
            return PassResult(modified=False, stats={"skipped_control_flow": 1})
        stats: Counter[str] = Counter()
        keep32 = profile.float32_ops
        kept_nodes = [n for n in graph.nodes if n.op in keep32]
        kept = _KeptNodes.record(kept_nodes)
        _convert_constants(graph, kept.ids, stats)
        _retarget_float_attributes(graph, kept.ids, stats)
        _retype_intermediates(graph, stats)
        _cast_inputs(graph, kept.ids, stats)
        _cast_around_kept(graph, kept, stats)
        _cast_outputs(graph, kept.ids, stats)
        graph.cleanup().toposort()
        return PassResult(modified=bool(stats), stats=dict(stats))
