"""Which nodes of a skeleton model the streaming path quantises, and with how many bits.

The rules are the graph pipeline's (passes/quantize/quantize_weight_only.py and weight_only_embedding.py): a
selected MatMul/Gemm with a constant float32 2-D weight gets the preset's bits, the final classifier gets
``lm_head_bits``, a Gather on a large constant float table read only by Gathers gets an int8 table. They run on
a planning copy of the skeleton whose constants are zero-stride arrays of the right shape and dtype, so the
rules see shapes and dtypes and no weight is read. ``classic_reason`` says when a model needs the graph
pipeline instead (weights computed by constant subgraphs, which only constant folding turns into initializers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from qcompile.config import CompileConfig, NumberFormat
from qcompile.graph.ops import RECURRENT_OPS
from qcompile.passes.prepare.name_nodes import unique_names
from qcompile.passes.quantize.quantize_gather import skip_reason
from qcompile.passes.quantize.quantize_weight_only import _unsupported_reason
from qcompile.selection import classifier_nodes, select_nodes

_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class MatMulTarget:
    """y = x·W (+ bias): W is initializer ``weight`` ([K, N], or [N, K] when ``transposed``: Gemm transB)."""

    node: str
    op: str
    input: str
    output: str
    weight: str
    transposed: bool
    bias: str | None
    bits: int
    role: str            # "matmul" or "lm_head"
    k: int
    n: int


@dataclass(frozen=True)
class EmbeddingTarget:
    node: str
    table: str
    ids: str
    output: str


@dataclass(frozen=True)
class Plan:
    matmuls: tuple[MatMulTarget, ...]
    embeddings: tuple[EmbeddingTarget, ...]
    skipped: dict[str, tuple[str, str]]          # node -> (op, reason)


def name_nodes(model: onnx.ModelProto) -> None:
    """Unique names for the main graph's nodes (passes/prepare/name_nodes.py's rule)."""
    nodes = model.graph.node
    for node, name in zip(nodes, unique_names([n.name for n in nodes], [n.op_type for n in nodes])):
        node.name = name


def _planning_graph(skeleton: onnx.ModelProto) -> gs.Graph:
    graph = gs.import_onnx(skeleton)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues):
            lazy = tensor._values
            tensor.values = np.broadcast_to(np.zeros((), dtype=lazy.dtype), tuple(lazy.shape))
    return graph


def classic_reason(skeleton: onnx.ModelProto) -> str:
    """Why the streaming path cannot take this model ("" when it can): a MatMul/Gemm weight computed from
    constants only, which constant folding (graph pipeline) would have made an initializer, or recurrent
    layers, whose W/R quantisation (passes/quantize/quantize_recurrent.py) runs in the graph pipeline."""
    graph = skeleton.graph
    recurrent = next((n for n in graph.node if n.op_type in RECURRENT_OPS), None)
    if recurrent is not None:
        return f"{recurrent.name or recurrent.op_type} is a recurrent layer (quantised by the graph pipeline)"
    constant = {t.name for t in graph.initializer}
    inputs = {v.name for v in graph.input} - constant
    from_constants: set[str] = set()
    for node in graph.node:   # topological order: a node's inputs are decided before its outputs
        if node.input and all(i == "" or i in constant or i in from_constants for i in node.input) \
                and not any(i in inputs for i in node.input):
            from_constants.update(node.output)
    for node in graph.node:
        if node.op_type in _OPS and len(node.input) > 1 and node.input[1] in from_constants:
            return f"the weight of {node.name} is computed from constants (the graph pipeline folds it)"
    return ""


def plan_streaming(skeleton: onnx.ModelProto, config: CompileConfig) -> Plan:
    graph = _planning_graph(skeleton)
    selections = select_nodes(graph, dataclasses.replace(config, quantize_classifier=True))
    heads = set() if config.quantize_classifier else classifier_nodes(graph)
    weight_only = config.weight_only
    matmuls: list[MatMulTarget] = []
    skipped: dict[str, tuple[str, str]] = {}
    for node in graph.nodes:
        selection = selections.get(node.name)
        if node.op not in _OPS or selection is None:
            continue
        reason = selection.reason if not selection.selected else _unsupported_reason(node)
        bits, role = config.preset.weight_only_bits, "matmul"
        if not reason and node.name in heads:
            bits, role = weight_only.lm_head_bits, "lm_head"
            reason = "lm_head kept float (weight_only.lm_head_bits = none)" if bits is None else ""
        transposed = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
        shape = node.inputs[1].shape if not reason else None
        k, n = (shape[1], shape[0]) if transposed and shape else (shape or (0, 0))
        if not reason and weight_only.number_format is NumberFormat.NF4 and bits == 4 and k % weight_only.block_size:
            reason = f"nf4 needs K ({k}) divisible by the block size"
        if reason:
            skipped[node.name] = (node.op, reason)
            continue
        bias = node.inputs[2].name if node.op == "Gemm" and len(node.inputs) > 2 and \
            isinstance(node.inputs[2], gs.Constant) else None
        matmuls.append(MatMulTarget(node.name, node.op, node.inputs[0].name, node.outputs[0].name,
                                    node.inputs[1].name, transposed, bias, bits, role, int(k), int(n)))
    embeddings: list[EmbeddingTarget] = []
    if weight_only.embedding_bits is not None:
        outputs = {t.name for t in graph.outputs}
        for node in graph.nodes:
            if node.op != "Gather":
                continue
            reason = skip_reason(node, outputs, config)
            table = node.inputs[0]
            if reason:
                if isinstance(table, gs.Constant) and table.values.size >= config.embedding.min_elements:
                    skipped[node.name] = (node.op, reason)
                continue
            embeddings.append(EmbeddingTarget(node.name, table.name, node.inputs[1].name, node.outputs[0].name))
    return Plan(tuple(matmuls), tuple(embeddings), skipped)
