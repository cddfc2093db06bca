"""Per-input-channel rewrites shared by SmoothQuant and outlier-channel splitting (helpers, not a pass).

A *group* is an activation X [..., K] and the compute nodes that read it as their data input with a constant
2-D weight whose K rows (Gemm with transB: columns) meet X's K channels:

    MatMul(X, W[K, N]),   Gemm(X, B[K, N]) (transA = 0, transB = 0),   Gemm(X, B[N, K]) (transB = 1)

``oriented`` weights are always [K, N]. ``plan_fold`` returns the edits that multiply X's channels by a constant
vector v (X -> X·diag(v)) without a new node, where X's producer is linear per channel and X feeds only the
group (and shape readers):

    LayerNormalization (last axis)   γ' = γ·v, β' = β·v
    MatMul(A, W) / Gemm(A, B, C)     output columns of W (B) and C scaled by v
    Mul(A, c), c constant [.., K]    c' = c·v     (scalar c declined: ORT matches Gelu/scale fusions on it)
    Add(A, c), c constant            c' = c·v and A·diag(v) folded recursively into A's producer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.graph.edits import Namer, replace_uses
from qcompile.graph.ops import SHAPE_ONLY_READERS


@dataclass
class ChannelConsumer:
    """A compute node reading X at input 0 with a constant 2-D weight; ``row_axis`` is the weight's K axis."""

    node: gs.Node
    weight_index: int
    row_axis: int

    @property
    def weight(self) -> gs.Constant:
        return self.node.inputs[self.weight_index]

    @property
    def oriented_shape(self) -> tuple[int, int]:
        rows, cols = self.weight.values.shape
        return (rows, cols) if self.row_axis == 0 else (cols, rows)

    def oriented(self) -> np.ndarray:
        """The weight as [K, N] (float32)."""
        values = np.asarray(self.weight.values, dtype=np.float32)
        return values if self.row_axis == 0 else values.T

    def set_oriented(self, oriented: np.ndarray, namer: Namer, tag: str) -> None:
        values = oriented if self.row_axis == 0 else oriented.T
        self.node.inputs[self.weight_index] = namer.constant(f"{self.weight.name}_{tag}", values.astype(np.float32))


def channel_consumer(node: gs.Node) -> tuple[ChannelConsumer | None, str]:
    """The node as a group member, or None and why not."""
    if node.op not in ("MatMul", "Gemm"):
        return None, "not a MatMul/Gemm"
    if len(node.inputs) < 2 or not isinstance(node.inputs[0], gs.Variable):
        return None, "data input is not an activation"
    weight = node.inputs[1]
    if not isinstance(weight, gs.Constant):
        return None, "weight is not a constant"
    if weight.values.ndim != 2 or weight.values.dtype != np.float32 or weight.values.size == 0:
        return None, "weight is not a 2-D float32 matrix"
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return None, "Gemm with transA=1"
        if len(node.inputs) > 2 and node.inputs[2] is not None and not isinstance(node.inputs[2], gs.Constant):
            return None, "Gemm bias is not a constant"
        return ChannelConsumer(node, 1, 1 if node.attrs.get("transB", 0) else 0), ""
    return ChannelConsumer(node, 1, 0), ""


def consumer_groups(graph: gs.Graph, selections: Mapping[str, object],
                    declined: dict[str, list[gs.Node]]) -> dict[str, list[ChannelConsumer]]:
    """Selected MatMul/Gemm group members by input tensor name; others into ``declined`` (reason -> nodes)."""
    groups: dict[str, list[ChannelConsumer]] = {}
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm"):
            continue
        selection = selections.get(node.name)
        consumer, reason = channel_consumer(node)
        if selection is None or not getattr(selection, "selected", False):
            consumer, reason = None, "not selected for quantisation"
        elif consumer is not None and _last_dim(node.inputs[0]) not in (None, consumer.oriented_shape[0]):
            consumer, reason = None, "weight rows do not match the input's last axis"
        if consumer is None:
            declined.setdefault(reason, []).append(node)
            continue
        groups.setdefault(node.inputs[0].name, []).append(consumer)
    return groups


def _last_dim(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    if not shape or not isinstance(shape[-1], int):
        return None
    return shape[-1]


def only_read_by(tensor: gs.Variable, nodes: set[str], graph_outputs: set[str]) -> bool:
    """True when every reader of ``tensor`` is in ``nodes`` or reads only its shape."""
    return tensor.name not in graph_outputs and all(
        c.name in nodes or c.op in SHAPE_ONLY_READERS for c in tensor.outputs)


def _per_channel(values: np.ndarray, channels: int, allow_scalar: bool) -> bool:
    if values.size == 1:
        return allow_scalar
    return values.ndim >= 1 and values.shape[-1] in (1, channels) and values.size == values.shape[-1]


Edit = Callable[[np.ndarray], None]


def plan_fold(tensor: gs.Variable, readers: set[str], graph_outputs: set[str], channels: int, namer: Namer,
              depth: int = 0) -> list[Edit] | None:
    """Edits that fold X·diag(v) into X's producer (applied with v), or None where that is impossible."""
    if depth > 4 or not only_read_by(tensor, readers, graph_outputs) or len(tensor.inputs) != 1:
        return None
    producer = tensor.inputs[0]
    if len(producer.outputs) != 1:
        return None
    if producer.op == "LayerNormalization":
        return _fold_into_layernorm(producer, tensor, channels, namer)
    if producer.op in ("MatMul", "Gemm"):
        return _fold_into_matmul(producer, channels, namer)
    if producer.op in ("Mul", "Add") and len(producer.inputs) == 2:
        return _fold_into_mul_add(producer, tensor, graph_outputs, channels, namer, depth)
    return None


def _scale_input(inputs: list[gs.Tensor], index: int, namer: Namer, axis: int = -1) -> Edit:
    """inputs[index] ← inputs[index] · v along ``axis``."""
    def edit(v: np.ndarray) -> None:
        old = inputs[index]
        shape = [1] * old.values.ndim
        shape[axis] = -1
        inputs[index] = namer.constant(f"{old.name}_scaled", (old.values * v.reshape(shape)).astype(np.float32))
    return edit


def _scale_vector(inputs: list[gs.Tensor], index: int, namer: Namer) -> Edit:
    """inputs[index] ← inputs[index] · v (broadcast over the last axis)."""
    def edit(v: np.ndarray) -> None:
        old = inputs[index]
        inputs[index] = namer.constant(f"{old.name}_scaled", (old.values * v).astype(np.float32))
    return edit


def _fold_into_layernorm(producer: gs.Node, tensor: gs.Variable, channels: int, namer: Namer) -> list[Edit] | None:
    """γ' = γ·v, β' = β·v for a LayerNormalization over the last axis."""
    inputs = producer.inputs
    rank = len(tensor.shape) if tensor.shape is not None else None
    axis = int(producer.attrs.get("axis", -1))
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        return None
    params = [i for i in (1, 2) if i < len(inputs) and inputs[i] is not None and inputs[i].name]
    if not all(isinstance(inputs[i], gs.Constant) and _per_channel(inputs[i].values, channels, False)
               and inputs[i].values.shape[-1] == channels for i in params):
        return None
    return [_scale_vector(inputs, i, namer) for i in params]


def _fold_into_matmul(producer: gs.Node, channels: int, namer: Namer) -> list[Edit] | None:
    """Output columns of W (B) and the Gemm bias C scaled by v."""
    inputs = producer.inputs
    consumer, _ = channel_consumer(producer)
    if consumer is None:
        return None
    out_axis = 1 - consumer.row_axis
    if consumer.weight.values.shape[out_axis] != channels:
        return None
    edits = [_scale_input(inputs, 1, namer, out_axis)]
    if producer.op == "Gemm" and len(inputs) > 2 and inputs[2] is not None and inputs[2].name:
        if not _per_channel(inputs[2].values, channels, True):
            return None
        edits.append(_scale_vector(inputs, 2, namer))
    return edits


def _fold_into_mul_add(producer: gs.Node, tensor: gs.Variable, graph_outputs: set[str], channels: int,
                       namer: Namer, depth: int) -> list[Edit] | None:
    """Mul(A, c): c' = c·v.  Add(A, c): c' = c·v and A·diag(v) folded recursively into A's producer."""
    inputs = producer.inputs
    const = [i for i, t in enumerate(inputs) if isinstance(t, gs.Constant)]
    if len(const) != 1 or inputs[const[0]].values.dtype != np.float32:
        return None
    c, other = const[0], 1 - const[0]
    if producer.op == "Mul":
        if not _per_channel(inputs[c].values, channels, False) or inputs[c].values.shape[-1] != channels:
            return None
        return [_scale_vector(inputs, c, namer)]
    if not _per_channel(inputs[c].values, channels, True) or not isinstance(inputs[other], gs.Variable):
        return None
    rank = len(tensor.shape) if tensor.shape is not None else 0
    if inputs[c].values.ndim > max(rank, 1):
        return None
    inner = plan_fold(inputs[other], {producer.name}, graph_outputs, channels, namer, depth + 1)
    if inner is None:
        return None
    return [*inner, _scale_vector(inputs, c, namer)]


def insert_channel_mul(graph: gs.Graph, tensor: gs.Variable, readers: list[gs.Node], v: np.ndarray,
                       namer: Namer, tag: str) -> gs.Variable:
    """X -> Mul(X, v) for ``readers`` only; other readers keep X."""
    out = gs.Variable(namer(f"{tensor.name}_{tag}"), dtype=tensor.dtype, shape=tensor.shape)
    graph.nodes.append(gs.Node("Mul", name=namer(f"{tensor.name}_{tag}_Mul"),
                               inputs=[tensor, namer.constant(f"{tensor.name}_{tag}_factors", v.astype(np.float32))],
                               outputs=[out]))
    replace_uses(tensor, out, readers)
    return out
