"""Which optimised node computes an original one: the matcher behind the fusion check (runtime_ext/fusion.py).

ORT's node names are not stable (kept, suffixed ``_token_<k>`` by ``Graph::GenerateNodeName``, derived from an
output name, or replaced) and output tensor names are not stable either (NHWC layout and s8->u8 rewrite new
tensors). The matcher tries, in order, and takes the first hit:

1. the original node's own output tensors: their producer in the optimised graph, walking back through
   layout / QDQ plumbing (Transpose, ReorderOutput, Q, DQ, Reshape, ...) to the computing node;
2. a node with exactly the original name (not a plumbing node);
3. generated names ``<name>_token_<k>`` (an integer kernel preferred among several);
4. tensors downstream of the node in the original graph through single ops ORT fuses into it (Q, DQ, Relu,
   Clip, Add, Mul, ...; depth 3), traced back as in 1.
A node found by none of these is reported as ``REMOVED`` ('<removed>') and counted as unfused.

Integer kernels (``INTEGER_KERNELS``): QLinearConv, QLinearMatMul, MatMulInteger, MatMulIntegerToFloat,
DynamicQuantizeMatMul, QGemm, QLinearAdd, QLinearMul, QLinearAveragePool, QLinearGlobalAveragePool,
QLinearConcat, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax, ConvInteger, MatMulNBits, MatMulBnb4,
QAttention, QEmbedLayerNormalization, QLinearReduceMean, QLinearWhere, QLinearConvTranspose,
GatherBlockQuantized. A plain Gather reading an integer initializer (a quantised embedding table, dequantised
after the Gather) also counts as fused: it moves integers, as intended.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence

import onnx

from qcompile.graph.ops import DATA_MOVEMENT_OPS, QDQ_OPS
from qcompile.graph.scopes import proto_graphs

__all__ = ["INTEGER_KERNELS", "REMOVED", "GraphIndex", "kernel_of_nodes"]

logger = logging.getLogger(__name__)

INTEGER_KERNELS: frozenset[str] = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "ConvInteger",
        "MatMulNBits",
        "MatMulBnb4",
        "GatherBlockQuantized",
        "QAttention",
        "QEmbedLayerNormalization",
        "QLinearReduceMean",
        "QLinearWhere",
        "QLinearConvTranspose",
    }
)

REMOVED = "<removed>"

# Ops that only move, re-layout or re-encode data: walked through when tracing a tensor back to its computer.
_PLUMBING = DATA_MOVEMENT_OPS | QDQ_OPS | frozenset({"ReorderInput", "ReorderOutput", "Cast"})
# Single ops after a compute node that ORT may fold into it (activation, bias, scale, the output Q/DQ).
_FOLLOW = QDQ_OPS | frozenset(
    {
        "Relu",
        "Clip",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Add",
        "Mul",
        "Div",
        "Transpose",
        "Reshape",
    }
)
_FOLLOW_DEPTH = 3
_WALK_LIMIT = 16


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for g in proto_graphs(graph):
        yield from g.node


class GraphIndex:
    """Name, producer and consumer lookups over a graph and its subgraphs."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(_nodes(graph))
        self.by_name: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.constants: set[str] = set()
        for g in proto_graphs(graph):
            self.constants.update(init.name for init in g.initializer)
            self.constants.update(init.values.name for init in g.sparse_initializer)
        for node in self.nodes:
            if node.name:
                self.by_name.setdefault(node.name, []).append(node)
            for out in node.output:
                if out:
                    self.producer.setdefault(out, node)
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constants.update(o for o in node.output if o)

    def trace_back(self, tensor: str) -> onnx.NodeProto | None:
        """Producer of ``tensor``, walking back through plumbing ops to the node that computes it."""
        node = self.producer.get(tensor)
        for _ in range(_WALK_LIMIT):
            if node is None or node.op_type not in _PLUMBING:
                return node
            data = node.input[0] if node.input else ""
            node = self.producer.get(data) if data else None
        return None


def _pick(candidates: Sequence[onnx.NodeProto]) -> onnx.NodeProto | None:
    compute = [n for n in candidates if n.op_type not in _PLUMBING]
    for n in compute:
        if n.op_type in INTEGER_KERNELS:
            return n
    return compute[0] if compute else None


def _downstream_tensors(node: onnx.NodeProto, orig: GraphIndex) -> list[str]:
    """Outputs of the ops after ``node`` that ORT may fuse into it, nearest first."""
    found: list[str] = []
    frontier = [o for o in node.output if o]
    seen = set(frontier)
    for _ in range(_FOLLOW_DEPTH):
        nxt: list[str] = []
        for tensor in frontier:
            for consumer in orig.consumers.get(tensor, ()):
                if consumer.op_type not in _FOLLOW:
                    continue
                for out in consumer.output:
                    if out and out not in seen:
                        seen.add(out)
                        found.append(out)
                        nxt.append(out)
        frontier = nxt
    return found


def _match(node: onnx.NodeProto, orig: GraphIndex, opt: GraphIndex) -> onnx.NodeProto | None:
    name = node.name
    # 1. own outputs, traced back through layout / QDQ plumbing
    if node.op_type not in _PLUMBING:
        for out in node.output:
            if out and out in opt.producer:
                hit = opt.trace_back(out)
                if hit is not None:
                    return hit
    # 2. the same name
    hit = _pick(opt.by_name.get(name, ()))
    if hit is not None:
        return hit
    # 3. names generated from it: '<name>_token_<k>' (Graph::GenerateNodeName)
    pattern = re.compile(re.escape(name) + r"(?:_token_\d+)+")
    hit = _pick([n for nm, ns in opt.by_name.items() if pattern.fullmatch(nm) for n in ns])
    if hit is not None:
        return hit
    # 4. tensors downstream of the node (its activation, bias Add, output Q ...)
    for tensor in _downstream_tensors(node, orig):
        if tensor in opt.producer:
            hit = opt.trace_back(tensor)
            if hit is not None:
                return hit
    return None


def kernel_of_nodes(
    original: onnx.ModelProto, optimized: onnx.ModelProto, quantized_nodes: Sequence[str]
) -> dict[str, str]:
    """Map each name in ``quantized_nodes`` to the op type computing it in ``optimized`` (or ``REMOVED``).

    Raises ValueError for a name that is empty or not a node of ``original`` (a caller bug).
    """
    orig = GraphIndex(original.graph)
    opt = GraphIndex(optimized.graph)
    kernels: dict[str, str] = {}
    for name in quantized_nodes:
        if not name:
            raise ValueError("fusion check needs node names; got an empty name")
        nodes = orig.by_name.get(name)
        if not nodes:
            raise ValueError(f"node {name!r} is not in the model given to the fusion check")
        if len(nodes) > 1:
            logger.warning("node name %r occurs %d times; checking the first", name, len(nodes))
        hit = _match(nodes[0], orig, opt)
        kernels[name] = hit.op_type if hit is not None else REMOVED
    return kernels
