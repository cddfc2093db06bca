"""Q/DQ insertion: static INT8 for the selected compute nodes, placed so that ONNX Runtime fuses it.

For a selected node y = f(x, W, b) the pass rewrites

    x  ->  DQ(Q(x; s_x, z_x))                    per-tensor, range from calibration
    W  ->  DQ(W_q; s_W, 0)                       W_q = clip(round(W / s_W)), symmetric, per output channel
    b  ->  DQ(b_q; s_x·s_W, 0)                   b_q = round(b / (s_x·s_W)) as int32 (Conv, Gemm)

With bias correction (Conv, Gemm), the systematic error the rounded weights add to each output channel is
removed using the calibrated per-channel input mean E[x]:  b' = b − (Ŵ − W)·E[x]  (Nagel et al., 2019).

and, for ops the target profile says must be re-quantised to fuse (Conv, Gemm), also the output, taken after
any single-consumer Relu/Clip chain so ORT folds the activation into the Q. A data-movement op (MaxPool,
Reshape, ...) between two quantisation points inherits its input's (s, z) on its output, so ORT drops the
DQ→op→Q pair and moves integers. A point whose producer becomes an integer kernel feeds all its consumers
through the DQ (otherwise the fusion would be blocked); a point produced by a float op (LayerNorm, a graph
input) feeds only the quantised consumers, so float consumers (residual streams) keep full precision.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.config import Granularity, QuantSpec
from qcompile.errors import UnsupportedModelError
from qcompile.pass_infra import (CalibratedPass, NodeDecision, NodeStatus, PassContext, PassResult, StatKind,
                                 StatRequest)
from qcompile.numerics.qparams import (QParams, QuantDType, bias_safe_weight_scale, compute_qparams, dequantize,
                              quantize, weight_range)
from qcompile.selection import NodeSelection, select_nodes

logger = logging.getLogger(__name__)

_FLOAT_TYPES = (np.float32,)
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
_BIAS_INPUT = {"Conv": 2, "Gemm": 2}


def bias_scale(x_params: QParams, w_params: QParams, node_name: str) -> np.ndarray:
    """The int32 bias scale s_x · s_w (per channel or scalar), float32.

    Raises UnsupportedModelError when it has no float32 value: then max|x| · max|w| is beyond float32, so the
    FP32 node overflows as well and no int32 bias can represent its bias."""
    with np.errstate(over="ignore"):
        scale = (np.float32(x_params.scale) * w_params.scale.astype(np.float32)).astype(np.float32)
    if not np.all(np.isfinite(scale)):
        raise UnsupportedModelError(
            f"node {node_name}: input scale {float(x_params.scale):.3g} x weight scale "
            f"{float(np.max(w_params.scale)):.3g} overflows float32 (the FP32 model overflows there)")
    return scale


@dataclass
class QuantPoint:
    """One activation tensor that gets a Q→DQ pair."""

    tensor: gs.Variable
    spec: QuantSpec
    integer_producer: bool = False           # producer becomes an integer kernel: every consumer reads the DQ
    consumers: set[str] = field(default_factory=set)   # node names that read the DQ (when not integer_producer)
    inherit_from: str | None = None          # data-movement output: reuse the input point's (scale, zp)


@dataclass
class QuantPlan:
    nodes: dict[str, tuple[gs.Node, NodeSelection, int | None]]   # name -> (node, selection, weight axis)
    points: dict[str, QuantPoint]
    skipped: dict[str, tuple[str, str]]                          # name -> (op, reason)
    activation_matmuls: dict[str, gs.Node] = field(default_factory=dict)   # both inputs quantised, no weight


def _is_float(tensor: gs.Tensor) -> bool:
    dtype = getattr(tensor, "dtype", None)
    if dtype is None:
        return True
    try:
        return np.dtype(dtype) in [np.dtype(t) for t in _FLOAT_TYPES]
    except TypeError:  # ONNX types numpy lacks (bfloat16, float8) stay float, unquantised
        return False


def weight_axis(node: gs.Node, weight: np.ndarray, profile) -> int | None:
    """The output-channel axis of a constant weight, or None where ORT takes only per-tensor scales."""
    if node.op not in profile.per_channel_ops:
        return None
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul" and weight.ndim == 2:
        return 1
    return None


def _producer_chain_end(node: gs.Node, fusable: frozenset[str], graph_outputs: set[str]) -> gs.Variable:
    """The node's output, moved past a single-consumer chain of activations ORT can fold into a Q."""
    tensor = node.outputs[0]
    while len(tensor.outputs) == 1 and tensor.outputs[0].op in fusable and tensor.name not in graph_outputs:
        nxt = tensor.outputs[0]
        if nxt.op == "Clip" and not all(isinstance(t, gs.Constant) for t in nxt.inputs[1:] if t is not None):
            break
        tensor = nxt.outputs[0]
    return tensor


def _becomes_float_gemm(node: gs.Node, graph_outputs: set[str]) -> bool:
    """A MatMul on a matrix whose output feeds an Add: ORT's MatMulAddFusion turns the pair into a float Gemm
    before its Q/DQ fusions run (whatever the Add's other input), leaving DQ -> Gemm unfused. A Q right on
    the MatMul's output keeps the Add away, and DQ -> MatMul -> Q becomes QLinearMatMul."""
    if node.op != "MatMul":
        return False
    x, out = node.inputs[0], node.outputs[0]
    return (x.shape is not None and len(x.shape) == 2 and out.name not in graph_outputs
            and any(c.op == "Add" for c in out.outputs))


def plan_quantization(graph: gs.Graph, selections: dict[str, NodeSelection], profile, *,
                      activation_matmuls: bool = False) -> QuantPlan:
    """Which nodes and tensors to quantise; pure graph analysis, no rewriting.

    ``activation_matmuls``: MatMuls of two activations (attention QKᵀ and P·V) get a Q/DQ on both inputs
    (ORT: MatMulIntegerToFloat); otherwise they stay float with a reason.
    """
    graph_outputs = {t.name for t in graph.outputs}
    nodes: dict[str, tuple[gs.Node, NodeSelection, int | None]] = {}
    skipped: dict[str, tuple[str, str]] = {}
    points: dict[str, QuantPoint] = {}
    act_matmuls: dict[str, gs.Node] = {}

    def add_point(tensor: gs.Variable, spec: QuantSpec, consumer: str | None, integer_producer: bool) -> None:
        if profile.activation_symmetric and not spec.symmetric:
            spec = dataclasses.replace(spec, symmetric=True)   # zero point 0 (TensorRT)
        point = points.setdefault(tensor.name, QuantPoint(tensor, spec))
        point.integer_producer |= integer_producer
        if consumer:
            point.consumers.add(consumer)

    for node in graph.nodes:
        selection = selections.get(node.name)
        if selection is None or not selection.selected:
            if selection is not None and node.op in _WEIGHT_INPUT:
                skipped[node.name] = (node.op, selection.reason)
            continue
        reason = _unsupported_reason(node)
        if reason and activation_matmuls and _is_activation_matmul(node):
            act_matmuls[node.name] = node
            for tensor in node.inputs[:2]:
                add_point(tensor, selection.activation, node.name, integer_producer=False)
            continue
        if reason:
            skipped[node.name] = (node.op, reason)
            continue
        weight = node.inputs[_WEIGHT_INPUT[node.op]]
        nodes[node.name] = (node, selection, weight_axis(node, weight.values, profile)
                            if selection.weight.granularity is Granularity.CHANNEL else None)

    for name, (node, selection, _) in nodes.items():
        add_point(node.inputs[0], selection.activation, name, integer_producer=False)
    _add_residual_points(graph, nodes, profile, add_point)
    guard_matmul_add = profile.requantize_matmul_before_add
    for name, (node, selection, _) in nodes.items():
        if node.op in profile.requantize_output_ops or (guard_matmul_add and _becomes_float_gemm(node, graph_outputs)):
            end = _producer_chain_end(node, profile.fusable_activations, graph_outputs)
            if end.name not in graph_outputs:
                add_point(end, selection.activation, None, integer_producer=True)

    # Points whose producer becomes integer because all of its float inputs are integer-producer points:
    # data-movement ops inherit the input's parameters (ORT drops the DQ/Q pair around them).
    for node in graph.nodes:
        if node.op in profile.transparent_ops and node.inputs and node.outputs:
            src, dst = node.inputs[0], node.outputs[0]
            if src.name in points and points[src.name].integer_producer and dst.name in points:
                points[dst.name].inherit_from = src.name
                points[dst.name].integer_producer = True
    return QuantPlan(nodes=nodes, points=points, skipped=skipped, activation_matmuls=act_matmuls)


def _is_activation_matmul(node: gs.Node) -> bool:
    return node.op == "MatMul" and len(node.inputs) == 2 and all(
        isinstance(t, gs.Variable) and _is_float(t) for t in node.inputs)


def _add_residual_points(graph: gs.Graph, nodes: dict, profile, add_point) -> None:
    """Add(op(x), r) with op a quantised node of a type in ``profile.residual_add_producers``: Q/DQ on r too,
    so the runtime (TensorRT) can fuse the Add into op's integer kernel (NVIDIA's Q/DQ placement guidance)."""
    producers = profile.residual_add_producers
    if not producers:
        return
    for add in graph.nodes:
        if add.op != "Add" or len(add.inputs) != 2:
            continue
        for this, other in (add.inputs, add.inputs[::-1]):
            producer = this.inputs[0] if isinstance(this, gs.Variable) and len(this.inputs) == 1 else None
            if producer is None or producer.op not in producers or producer.name not in nodes:
                continue
            if isinstance(other, gs.Variable) and _is_float(other):
                add_point(other, nodes[producer.name][1].activation, add.name, integer_producer=False)


def _unsupported_reason(node: gs.Node) -> str:
    if node.op not in _WEIGHT_INPUT:
        return f"op type {node.op} has no static INT8 lowering yet"
    if len(node.inputs) <= _WEIGHT_INPUT[node.op]:
        return "missing weight input"
    weight = node.inputs[_WEIGHT_INPUT[node.op]]
    if not isinstance(weight, gs.Constant):
        if node.op == "MatMul":
            return "activation x activation MatMul (no constant weight)"
        return "weight is not a constant"
    if not isinstance(node.inputs[0], gs.Variable) or not _is_float(node.inputs[0]):
        return "activation input is not a float tensor"
    if weight.values.dtype != np.float32:
        return f"weight dtype {weight.values.dtype} is not float32"
    if weight.values.size == 0:
        return "zero-size weight"
    if not np.isfinite(weight.values).all():
        return "weight holds NaN or Inf values"
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return "Gemm with transA=1"
    return ""


def bias_correction_delta(op: str, weight: np.ndarray, weight_dq: np.ndarray, input_mean: np.ndarray,
                          group: int = 1, trans_b: bool = False) -> np.ndarray:
    """(Ŵ − W)·E[x] per output channel: the expected output shift the weight rounding causes."""
    delta = weight_dq.astype(np.float64) - weight.astype(np.float64)
    mean = np.asarray(input_mean, dtype=np.float64)
    if op == "Conv":
        out_channels, in_per_group = delta.shape[0], delta.shape[1]
        summed = delta.reshape(out_channels, in_per_group, -1).sum(axis=2)          # [Co, Ci/g]
        group_of = np.arange(out_channels) // (out_channels // group)
        return np.einsum("oc,oc->o", summed, mean.reshape(group, in_per_group)[group_of])
    if op == "Gemm":
        return delta @ mean if trans_b else mean @ delta
    raise ValueError(f"no bias correction for {op}")


_BIAS_CORRECTED_OPS = frozenset({"Conv", "Gemm"})


def _mean_request(tensor_name: str, op: str) -> StatRequest:
    return StatRequest(tensor=tensor_name, kind=StatKind.CHANNEL_MEAN, axis=1 if op == "Conv" else -1)


def _point_request(point: QuantPoint, activation_dtype: QuantDType) -> StatRequest:
    return StatRequest(tensor=point.tensor.name, kind=StatKind.RANGE, method=point.spec.method,
                       percentile=point.spec.percentile, symmetric=point.spec.symmetric,
                       unsigned=not activation_dtype.signed)


class InsertQDQPass(CalibratedPass):
    """Insert QuantizeLinear/DequantizeLinear around the selected compute nodes (see module docstring)."""

    def __init__(self, *, subgraph: bool = False, classifier_rule: bool = True) -> None:
        self._plan: QuantPlan | None = None
        self._subgraph = subgraph                # an If/Loop/Scan body (see passes/quantize_subgraphs.py)
        self._classifier_rule = classifier_rule

    def _plan_for(self, graph: gs.Graph, ctx: PassContext) -> QuantPlan:
        # Selection runs on the graph as the quantize step sees it, so it sees folded weights.
        if self._plan is None:
            selections = select_nodes(graph, ctx.config, subgraph=self._subgraph,
                                      classifier_rule=self._classifier_rule)
            self._plan = plan_quantization(graph, selections, ctx.target,
                                           activation_matmuls=ctx.config.quantize_activation_matmuls)
        return self._plan

    def stat_requests(self, graph: gs.Graph, ctx: PassContext):
        plan = self._plan_for(graph, ctx)
        act = self._activation_dtype(ctx)
        requests = [_point_request(p, act) for p in plan.points.values()]
        if ctx.config.bias_correction:
            requests += [_mean_request(node.inputs[0].name, node.op) for node, _, _ in plan.nodes.values()
                         if node.op in _BIAS_CORRECTED_OPS]
        return requests

    @staticmethod
    def _activation_dtype(ctx: PassContext) -> QuantDType:
        return ctx.config.activation.dtype or ctx.target.activation_dtype

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        plan = self._plan_for(graph, ctx)
        profile = ctx.target
        act_dtype = self._activation_dtype(ctx)
        stats: Counter[str] = Counter()

        # 1. activation parameters (inherited ones copy their source's)
        act_params: dict[str, QParams] = {}
        for name, point in plan.points.items():
            if point.inherit_from is None:
                rng = ctx.range_of(_point_request(point, act_dtype))
                act_params[name] = compute_qparams(rng.min, rng.max, act_dtype, symmetric=point.spec.symmetric)
                ctx.tensor_ranges[name] = {**rng.as_json(), "method": point.spec.method.value}
        for name, point in plan.points.items():
            source = point.inherit_from
            while source is not None and source not in act_params:
                source = plan.points[source].inherit_from
            if point.inherit_from is not None:
                act_params[name] = act_params[source]
                rng = ctx.range_of(_point_request(point, act_dtype))
                ctx.tensor_ranges[name] = {**rng.as_json(), "method": "inherited", "inherited_from": source}
                stats["inherited_params"] += 1
            ctx.tensor_ranges[name].update(scale=float(act_params[name].scale),
                                           zero_point=int(act_params[name].zero_point))

        # 2. Q -> DQ per activation point (remember each node's float input first: rewiring renames it)
        node_input = {name: node.inputs[0].name for name, (node, _, _) in plan.nodes.items()}
        for name, point in plan.points.items():
            self._insert_activation_qdq(graph, point, act_params[name])
            stats["activation_qdq"] += 1

        # 3. weights and biases
        weight_cache: dict[tuple, tuple[gs.Variable, QParams, np.ndarray]] = {}
        for name, (node, selection, axis) in plan.nodes.items():
            w_index = _WEIGHT_INPUT[node.op]
            weight = node.inputs[w_index]
            x_params = act_params[node_input[name]]
            b_index = _BIAS_INPUT.get(node.op)
            bias = node.inputs[b_index] if b_index is not None and len(node.inputs) > b_index else None
            bias = bias if isinstance(bias, gs.Constant) else None
            correct = ctx.config.bias_correction and node.op in _BIAS_CORRECTED_OPS and (
                bias is not None or len(node.inputs) == b_index)
            if correct and bias is None:
                out_channels = weight.values.shape[0 if node.op == "Conv" or node.attrs.get("transB", 0) else 1]
                bias = gs.Constant(f"{name}_bias", np.zeros(out_channels, dtype=np.float32))
                node.inputs.append(bias)
            # the bias limits the weight scale (see bias_safe_weight_scale), so it is part of the key
            key = (weight.name, axis, bias.name if bias is not None else None,
                   float(x_params.scale) if bias is not None else None)
            if key not in weight_cache:
                weight_cache[key] = self._insert_weight_dq(graph, weight, axis, selection.weight,
                                                           profile.reduce_range, bias, x_params,
                                                           copy=sum(k[0] == weight.name for k in weight_cache))
            w_out, w_params, w_quantized = weight_cache[key]
            node.inputs[w_index] = w_out
            detail = {"weight_dtype": selection.weight.dtype.value, "per_channel": axis is not None,
                      "reduce_range": profile.reduce_range, "activation_dtype": act_dtype.value,
                      "input_scale": float(x_params.scale)}
            if bias is not None:
                bias_scale(x_params, w_params, node.name)   # before bias correction, which overflows alike
                if correct:
                    mean = ctx.range_of(_mean_request(node_input[name], node.op)).min
                    shift = bias_correction_delta(node.op, weight.values, dequantize(w_quantized, w_params), mean,
                                                  int(node.attrs.get("group", 1)), bool(node.attrs.get("transB", 0)))
                    corrected = bias.values.astype(np.float64) - shift
                    if not np.all(np.abs(corrected) <= np.finfo(np.float32).max):
                        # |ΔW|·|E[x]| beyond float32 implies |W|·|x| is too: the FP32 node overflows as well
                        raise UnsupportedModelError(f"node {node.name}: its bias correction overflows float32 "
                                                    "(the FP32 model overflows there)")
                    bias = gs.Constant(f"{bias.name}_corrected_{name}", corrected.astype(np.float32))
                    detail["bias_correction_max"] = float(np.max(np.abs(shift))) if shift.size else 0.0
                    stats["bias_corrected"] += 1
                if profile.quantize_bias:
                    node.inputs[b_index] = self._insert_bias_dq(graph, bias, x_params, w_params, node.name)
                    detail["bias"] = "int32"
                else:   # the runtime quantises the bias itself (TensorRT)
                    node.inputs[b_index] = bias
                    detail["bias"] = "float"
            ctx.decide(NodeDecision(name, node.op, NodeStatus.QUANTIZED, "static int8", detail))
            stats["quantized"] += 1
            stats[f"quantized_{node.op}"] += 1

        for name in plan.activation_matmuls:
            ctx.decide(NodeDecision(name, "MatMul", NodeStatus.QUANTIZED, "static int8, activation x activation",
                                    {"activation_dtype": act_dtype.value}))
            stats["quantized_activation_matmul"] += 1
        for name, (op, reason) in plan.skipped.items():
            ctx.decide(NodeDecision(name, op, NodeStatus.SKIPPED, reason))
            stats["skipped"] += 1
        graph.cleanup().toposort()
        return PassResult(modified=bool(plan.nodes) or bool(plan.activation_matmuls), stats=dict(stats))

    @staticmethod
    def _insert_activation_qdq(graph: gs.Graph, point: QuantPoint, params: QParams) -> gs.Variable:
        tensor = point.tensor
        base = tensor.name
        scale = gs.Constant(f"{base}_scale", np.asarray(params.scale, dtype=np.float32).reshape(()))
        zero_point = gs.Constant(f"{base}_zp", np.asarray(params.zero_point).reshape(()))
        quantized = gs.Variable(f"{base}_q", dtype=params.dtype.numpy_dtype, shape=tensor.shape)
        dequantized = gs.Variable(f"{base}_dq", dtype=np.float32, shape=tensor.shape)
        consumers = [c for c in list(tensor.outputs)
                     if point.integer_producer or c.name in point.consumers]
        q_node = gs.Node("QuantizeLinear", name=f"{base}_Q", inputs=[tensor, scale, zero_point],
                         outputs=[quantized])
        dq_node = gs.Node("DequantizeLinear", name=f"{base}_DQ",
                          inputs=[quantized, scale, zero_point], outputs=[dequantized])
        for consumer in consumers:
            for index, t in enumerate(consumer.inputs):
                if t is tensor:
                    consumer.inputs[index] = dequantized
        graph.nodes.extend([q_node, dq_node])
        return dequantized

    @staticmethod
    def _insert_weight_dq(graph: gs.Graph, weight: gs.Constant, axis: int | None, spec: QuantSpec,
                          reduce_range: bool, bias: gs.Constant | None,
                          x_params: QParams, copy: int = 0) -> tuple[gs.Variable, QParams, np.ndarray]:
        values = weight.values.astype(np.float32)
        rng = weight_range(values, axis)
        params = compute_qparams(rng.min, rng.max, spec.dtype, symmetric=spec.symmetric,
                                 reduce_range=reduce_range, axis=axis)
        if bias is not None and spec.symmetric:
            # per channel: each channel's own bias; per tensor: the largest |bias| bounds the one scale
            limiting_bias = (bias.values.reshape(np.shape(params.scale))
                             if np.size(params.scale) == np.size(bias.values) else np.max(np.abs(bias.values)))
            safe = bias_safe_weight_scale(params.scale, limiting_bias, float(x_params.scale))
            params = QParams(scale=safe, zero_point=params.zero_point, dtype=params.dtype, axis=axis)
        q_values = quantize(values, params)
        base = weight.name if not copy else f"{weight.name}_{copy}"  # a shared weight quantised twice
        q_const = gs.Constant(f"{base}_q", q_values)
        scale = gs.Constant(f"{base}_scale", params.scale.astype(np.float32))
        zero_point = gs.Constant(f"{base}_zp", params.zero_point)
        out = gs.Variable(f"{base}_dq", dtype=np.float32, shape=list(values.shape))
        attrs = {"axis": axis} if axis is not None else {}
        graph.nodes.append(gs.Node("DequantizeLinear", name=f"{base}_DQ", attrs=attrs,
                                   inputs=[q_const, scale, zero_point], outputs=[out]))
        return out, params, q_values

    @staticmethod
    def _insert_bias_dq(graph: gs.Graph, bias: gs.Constant, x_params: QParams, w_params: QParams, node_name: str) -> gs.Variable:
        scale = bias_scale(x_params, w_params, node_name)
        values = bias.values.astype(np.float64)
        safe = np.where(scale > 0, scale, 1.0)
        q_bias = np.clip(np.rint(values / safe), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        base = f"{bias.name}_{node_name}"
        out = gs.Variable(f"{base}_dq", dtype=np.float32, shape=list(values.shape))
        per_channel = scale.ndim == 1 and scale.size == values.size and scale.size > 1
        scale_values = scale if per_channel else scale.reshape(-1)[:1].reshape(())
        zero = np.zeros(scale_values.shape, dtype=np.int32)
        graph.nodes.append(gs.Node(
            "DequantizeLinear", name=f"{base}_DQ", attrs={"axis": 0} if per_channel else {},
            inputs=[gs.Constant(f"{base}_q", q_bias), gs.Constant(f"{base}_scale", scale_values),
                    gs.Constant(f"{base}_zp", zero)], outputs=[out]))
        return out
