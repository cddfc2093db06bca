"""The final classifier at int8 weights with a float input: the middle option between static int8 and float.

For a classifier node y = W ⊛ x + b kept float by the selection rule (Gemm, MatMul or Conv with a constant
float32 weight in the main graph), the weight becomes

    s_o = max_k |W[o, k]| / 127      W_q = clip(round(W / s), -127, 127)      W ≈ DequantizeLinear(W_q, s, 0; axis)

one scale per output channel o (Gemm: axis 0 with transB, else 1; MatMul: the last axis; Conv: axis 0), and
x, b and y stay float. Where the static int8 compile of the same model is at hand, its codes and scales (learned
rounding) and its bias-corrected bias are taken instead of nearest rounding. The stored weight is int8 (the size of the static int8 compile) while the node's input
keeps its float precision: the error is that of the weight rounding alone (per channel ≤ s_o / 2), without the
per-tensor 8-bit quantisation of the classifier's input, which is what costs decisions when a classifier reads
pooled features (accuracy/classifier.py measures both). ORT runs the DequantizeLinear and the float kernel.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from qcompile.graph.scopes import proto_graphs
from qcompile.numerics.qparams import QuantDType, compute_qparams, quantize, weight_range

WEIGHT_ONLY_OPS = frozenset({"Gemm", "MatMul", "Conv"})
MIN_OPSET = 13                         # per-axis DequantizeLinear


def output_channel_axis(node: onnx.NodeProto, rank: int) -> int:
    """The weight axis that indexes the node's output channels."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return rank - 1 if node.op_type == "MatMul" else 0


def static_weights(static: onnx.ModelProto, name: str) -> tuple[list[onnx.TensorProto], int, onnx.TensorProto | None] | None:
    """(weight codes, scale, zero point; axis; the float bias) the static int8 compile ``static`` gave node
    ``name``: its learned rounding and bias correction (the bias as the float its int32 DequantizeLinear gives).
    None where that node's weight is not a DequantizeLinear of initializers there."""
    initializers = {t.name: t for t in static.graph.initializer}
    producers = {o: n for n in static.graph.node for o in n.output}
    node = next((n for n in static.graph.node if n.name == name), None)
    if node is None or len(node.input) < 2 or node.input[1] not in producers:
        return None
    dq = producers[node.input[1]]
    if dq.op_type != "DequantizeLinear" or not all(i in initializers for i in dq.input[:3]):
        return None
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        source = producers.get(node.input[2])
        if source is not None and source.op_type == "DequantizeLinear" and source.input[0] in initializers:
            codes, scale = (numpy_helper.to_array(initializers[i]) for i in source.input[:2])
            bias = numpy_helper.from_array((codes.astype("float64") * scale).astype("float32"), "")
        elif node.input[2] in initializers:
            bias = initializers[node.input[2]]
    return [initializers[i] for i in dq.input[:3]], axis, bias


def with_int8_weights(model: onnx.ModelProto, names: list[str],
                      static: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with the named main-graph nodes' constant weights as per-channel int8 DequantizeLinear
    (module docstring), and the names it changed (a node whose weight is not a float32 initializer of rank ≥ 2
    read by it alone, or a model below opset 13, is left as it is). With ``static`` (the static int8 compile of
    the same model) a node takes the codes, scales and corrected bias that compile chose (``static_weights``);
    else nearest rounding of its own weight."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if opset < MIN_OPSET:
        return out, []
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in (n for g in proto_graphs(graph) for n in g.node):   # bodies read outer initializers by name too
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    wanted, changed, new_nodes = set(names), [], []
    for node in graph.node:
        if node.name not in wanted or node.op_type not in WEIGHT_ONLY_OPS or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or len(weight.dims) < 2 \
                or readers.get(weight.name, 0) != 1:
            continue
        base = f"{weight.name}_weight_only"
        chosen = static_weights(static, node.name) if static is not None else None
        if chosen is not None and list(chosen[0][0].dims) == list(weight.dims):
            (codes, scale, zero_point), axis, bias = chosen
            tensors = [numpy_helper.to_array(t) for t in (codes, scale, zero_point)]
            if bias is not None and len(node.input) > 2 and node.input[2] in initializers \
                    and readers.get(node.input[2], 0) == 1:
                old_bias = initializers[node.input[2]]
                graph.initializer.remove(old_bias)
                graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(bias), old_bias.name))
        else:
            values = numpy_helper.to_array(weight)
            axis = output_channel_axis(node, values.ndim)
            rng = weight_range(values, axis)
            params = compute_qparams(rng.min, rng.max, QuantDType.INT8, symmetric=True, axis=axis)
            tensors = [quantize(values, params), params.scale.astype("float32"), params.zero_point]
        graph.initializer.extend([numpy_helper.from_array(t, f"{base}_{suffix}")
                                  for t, suffix in zip(tensors, ("q", "scale", "zp"))])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zp"],
                                          [f"{base}_dq"], name=f"{base}_DQ", axis=axis))
        graph.initializer.remove(weight)
        node.input[1] = f"{base}_dq"
        changed.append(node.name)
    for position, node in enumerate(new_nodes):     # producers first: the graph stays topologically sorted
        graph.node.insert(position, node)
    return out, changed
