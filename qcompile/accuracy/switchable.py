"""The switchable graph S: one copy of the quantised (Q/DQ) graph in which each quantisation can be turned off.

Every activation quantisation point p (x → Q → DQ → x̂) becomes x'_p = Where(s_p, x̂_p, x_p);
every weight or bias a quantised node n reads through a DQ becomes W'_n = Where(s_n, Ŵ_n, W_n), W_n the float
value from the graph right before quantisation. The switches are boolean graph inputs (each Where is an If
whose branches hold the Q/DQ pair or the float value, so the quantisation only runs when on). All off, S
computes the FP32 graph; all on, the quantised graph as float arithmetic on dequantised values (Q/DQ
simulation; ORT's integer kernels differ only in the rounding of the requantisation). Node n's group

    G(n) = {s_n} ∪ {s_p : n reads x̂_p} ∪ {s_p : p is n's output point, reached from n's output through the
                                            activations ORT folds into a Q (Relu, Clip)}

is what is quantised when n alone is (except that a point n shares with a float consumer, such as a residual
Add, feeds that consumer its quantised value too, as it does in the full model). y_n, node n's output (x'_p of
its output point if it has one, else its own output), and n's FP32 input x are exposed as graph outputs.
The measurements on S are in qcompile/accuracy/sensitivity.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompile.errors import UnsupportedModelError
from qcompile.numerics.fp8 import E4M3FN, E4M3FN_MAX
from qcompile.runtime_ext.session import GraphOptimization, make_session, ort_error_line

OPT = GraphOptimization.BASIC
_MAX_CHAIN = 8                 # activations followed from a node's output to its output point


@dataclass
class SwitchPoint:
    """An activation quantisation point p: x → Q → DQ → x̂, switched by the boolean input ``switch``."""

    switch: str
    x: gs.Variable
    dq_out: gs.Variable
    q_node: gs.Node
    dq_node: gs.Node
    scale: float | None
    zero_point: int
    qmin: int
    qmax: int
    float_codes: bool = False      # FP8 E4M3FN: codes are floats (qmin/qmax are ±448), no integer histogram


@dataclass
class SwitchedLayer:
    """A measured node n: its switch s_n, its group G(n), the tensor y_n and its input point."""

    name: str
    op: str
    switch: str
    group: set[str]
    output: str = ""
    input_point: SwitchPoint | None = None
    weights: dict[int, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)  # input -> (W, Ŵ)


def _activation_points(graph: gs.Graph) -> list[SwitchPoint]:
    points = []
    for node in graph.nodes:
        if node.op != "QuantizeLinear" or not isinstance(node.inputs[0], gs.Variable):
            continue
        consumers = list(node.outputs[0].outputs)
        if len(consumers) != 1 or consumers[0].op != "DequantizeLinear":
            continue
        scale = node.inputs[1]
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        zp_values = zp.values if isinstance(zp, gs.Constant) else np.zeros((), np.uint8)
        float_codes = zp_values.dtype == E4M3FN
        info = np.iinfo(zp_values.dtype) if zp_values.dtype.kind in "iu" else None
        limits = (int(info.min), int(info.max)) if info else (-int(E4M3FN_MAX), int(E4M3FN_MAX)) if float_codes \
            else (0, 0)
        per_tensor = isinstance(scale, gs.Constant) and scale.values.size == 1 and (info is not None or float_codes)
        points.append(SwitchPoint(
            switch=f"qcompile_switch_p{len(points)}", x=node.inputs[0], dq_out=consumers[0].outputs[0],
            q_node=node, dq_node=consumers[0],
            scale=float(scale.values.reshape(-1)[0]) if per_tensor else None,
            zero_point=int(zp_values.reshape(-1)[0].astype(np.float32)) if per_tensor else 0,
            qmin=limits[0], qmax=limits[1], float_codes=float_codes))
    return points


def _output_point(node: gs.Node, by_x: Mapping[str, SwitchPoint], fusable: frozenset[str]) -> SwitchPoint | None:
    tensor = node.outputs[0]
    for _ in range(_MAX_CHAIN):
        if tensor.name in by_x:
            return by_x[tensor.name]
        consumers = list(tensor.outputs)
        if len(consumers) != 1 or consumers[0].op not in fusable or consumers[0].inputs[0] is not tensor:
            return None
        tensor = consumers[0].outputs[0]
    return None


def _branch(graph: gs.Graph, name: str, nodes: list[gs.Node], output: gs.Variable) -> gs.Graph:
    return gs.Graph(nodes=nodes, outputs=[output], name=name, opset=graph.opset, import_domains=graph.import_domains)


def _switch_point(graph: gs.Graph, point: SwitchPoint) -> None:
    """x̂ = If(s_p, then: DQ(Q(x)), else: x): the Q/DQ pair moves into the then-branch, so it only runs when on."""
    dtype = point.x.dtype or np.float32
    switch = gs.Variable(point.switch, dtype=np.bool_, shape=())
    graph.inputs.append(switch)
    inner = gs.Variable(f"{point.dq_out.name}__quantized", dtype=dtype)
    point.dq_node.outputs.clear()
    point.dq_node.outputs.append(inner)
    graph.nodes.remove(point.q_node)
    graph.nodes.remove(point.dq_node)
    copy = gs.Variable(f"{point.dq_out.name}__float", dtype=dtype)
    graph.nodes.append(gs.Node("If", name=f"{point.switch}_If", inputs=[switch], outputs=[point.dq_out], attrs={
        "then_branch": _branch(graph, f"{point.switch}_on", [point.q_node, point.dq_node], inner),
        "else_branch": _branch(graph, f"{point.switch}_off", [gs.Node("Identity", inputs=[point.x], outputs=[copy])],
                               copy)}))


def _switch_weight(graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray, switch: gs.Variable) -> np.ndarray | None:
    """node.inputs[index] = If(s_n, then: its DQ, else: the float value); returns Ŵ when computable here."""
    quantized = node.inputs[index]
    dq_node = quantized.inputs[0]
    dequantized = _dequantize_constant(dq_node)
    out = gs.Variable(f"{quantized.name}__switched_{switch.name}", dtype=values.dtype)
    on_out = gs.Variable(f"{out.name}__on", dtype=values.dtype)
    off_out = gs.Variable(f"{out.name}__off", dtype=values.dtype)
    if len(quantized.outputs) == 1 and quantized not in graph.outputs:    # only this node reads it: move the DQ
        graph.nodes.remove(dq_node)
        dq_node.outputs.clear()
        dq_node.outputs.append(on_out)
        on_nodes = [dq_node]
    else:
        on_nodes = [gs.Node("Identity", inputs=[quantized], outputs=[on_out])]
    node.inputs[index] = out
    float_value = gs.Constant(f"{quantized.name}__float_{switch.name}", values)
    graph.nodes.append(gs.Node("If", name=f"{switch.name}_If_{index}", inputs=[switch], outputs=[out], attrs={
        "then_branch": _branch(graph, f"{out.name}_on", on_nodes, on_out),
        "else_branch": _branch(graph, f"{out.name}_off", [gs.Node("Identity", inputs=[float_value],
                                                                  outputs=[off_out])], off_out)}))
    return dequantized


def _dequantize_constant(dq_node: gs.Node) -> np.ndarray | None:
    """DequantizeLinear of constants in numpy (per tensor or per axis); None for blocked or exotic types."""
    inputs = [t for t in dq_node.inputs if t is not None and t.name]
    if not all(isinstance(t, gs.Constant) for t in inputs) or dq_node.attrs.get("block_size", 0):
        return None
    values, scale = inputs[0].values, inputs[1].values.astype(np.float32)
    zero = inputs[2].values if len(inputs) > 2 else np.zeros_like(scale, dtype=np.int64)
    if values.dtype == E4M3FN:      # FP8: zero point 0, x = float(q)·s
        zero = np.zeros(scale.shape, dtype=np.float32)
    elif values.dtype.kind not in "iu":
        return None
    if scale.size > 1:
        axis = int(dq_node.attrs.get("axis", 1)) % values.ndim
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    with np.errstate(invalid="ignore", over="ignore"):   # a weight holding Inf/NaN dequantises to NaN, reported so
        return (values.astype(np.float32) - zero.astype(np.float32)) * scale


def _float_weights(node: gs.Node, reference: gs.Node) -> tuple[list[tuple[int, np.ndarray]], str]:
    """(input index, float value) for each input read through a DQ of constants, or a reason it cannot be."""
    found = []
    for index, tensor in enumerate(node.inputs[1:], start=1):
        producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None
        if producer is None or producer.op != "DequantizeLinear" or not isinstance(producer.inputs[0], gs.Constant):
            continue
        shape = tuple(producer.inputs[0].shape)
        original = reference.inputs[index] if index < len(reference.inputs) else None
        if isinstance(original, gs.Constant):
            values = original.values
        elif original is None or not original.name:
            values = np.zeros(shape, np.float32)          # a bias the compile added (bias correction)
        else:
            return [], f"input {index} has no constant float value before quantisation"
        if tuple(values.shape) != shape:
            return [], f"input {index}: quantised shape {shape} differs from float shape {values.shape}"
        found.append((index, values))
    return found, ""


class SwitchableModel:
    """The switchable graph S of the module docstring, with an ORT session (no graph optimisation)."""

    def __init__(self, reference: onnx.ModelProto, quantized: onnx.ModelProto, node_names: Sequence[str],
                 fusable: frozenset[str]) -> None:
        graph = gs.import_onnx(quantized)
        reference_nodes = {n.name: n for n in gs.import_onnx(reference).nodes}
        nodes = {n.name: n for n in graph.nodes}
        points = _activation_points(graph)
        by_dq = {p.dq_out.name: p for p in points}
        by_x = {p.x.name: p for p in points}
        self.layers: list[SwitchedLayer] = []
        self.unmeasured: list[dict[str, str]] = []
        weight_plan: list[tuple[SwitchedLayer, gs.Node, list[tuple[int, np.ndarray]]]] = []
        for name in node_names:
            node, reference_node = nodes.get(name), reference_nodes.get(name)
            if node is None or reference_node is None:
                self.unmeasured.append({"name": name, "reason": "not in the main graph before and after quantisation"})
                continue
            weights, reason = _float_weights(node, reference_node)
            if node.op == "Gather" and isinstance(node.inputs[0], gs.Constant) \
                    and node.inputs[0].values.dtype.kind in "iu":
                reason = "gathers from an int8 table (integer output; its error shows in the model outputs)"
            if reason:
                self.unmeasured.append({"name": name, "reason": reason})
                continue
            layer = SwitchedLayer(name=name, op=node.op, switch=f"qcompile_switch_n{len(self.layers)}", group=set())
            layer.group.add(layer.switch)
            inputs = [by_dq[t.name] for t in node.inputs if isinstance(t, gs.Variable) and t.name in by_dq]
            layer.group.update(p.switch for p in inputs)
            layer.input_point = by_dq.get(node.inputs[0].name) if node.inputs else None
            out_point = _output_point(node, by_x, fusable)
            if out_point is not None:
                layer.group.add(out_point.switch)
            layer.output = out_point.dq_out.name if out_point is not None else node.outputs[0].name
            self.layers.append(layer)
            weight_plan.append((layer, node, weights))

        for point in points:
            _switch_point(graph, point)
        for layer, node, weights in weight_plan:
            switch = gs.Variable(layer.switch, dtype=np.bool_, shape=())
            graph.inputs.append(switch)
            for index, values in weights:
                layer.weights[index] = (values, _switch_weight(graph, node, index, values, switch))

        self.output_names = [t.name for t in graph.outputs]
        self.switches = [p.switch for p in points] + [layer.switch for layer in self.layers]
        self.points = points
        tensors = graph.tensors()
        exposed = {layer.output for layer in self.layers} | {
            layer.input_point.x.name for layer in self.layers if layer.input_point is not None}
        for name in sorted(exposed - set(self.output_names)):
            tensor = tensors[name]
            if tensor.dtype is None:
                tensor.dtype = np.float32
            graph.outputs.append(tensor)
        model = gs.export_onnx(graph, do_type_check=False)
        self.session = make_session(model, optimization=OPT)

    def run(self, names: Sequence[str], feed: Mapping[str, np.ndarray], on: Iterable[str]) -> dict[str, np.ndarray]:
        """The named tensors on ``feed`` with the switches in ``on`` on and every other switch off."""
        on = set(on)
        feeds = dict(feed)
        feeds.update({s: np.array(s in on) for s in self.switches})
        unique = list(dict.fromkeys(names))
        try:
            return dict(zip(unique, self.session.run(unique, feeds)))
        except Exception as exc:  # ORT's pybind errors derive from Exception only
            raise UnsupportedModelError(f"per-layer analysis: onnxruntime failed on the switchable graph: "
                                        f"{ort_error_line(exc)}") from exc

    def group_switches(self, quantized: Iterable[str]) -> set[str]:
        """Switches on in the model compiled with only the named layers quantised (other points stay on only
        if no layer owns them, i.e. they belong to nodes this analysis does not measure)."""
        keep = set(quantized)
        owned = set().union(*(layer.group for layer in self.layers)) if self.layers else set()
        on = set(self.switches) - owned
        for layer in self.layers:
            if layer.name in keep:
                on |= layer.group
        return on
