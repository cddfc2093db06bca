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

from qcompile.config import CalibrationMethod, Granularity, QuantSpec
from qcompile.graph.edits import replace_uses
from qcompile.graph.ops import BIAS_INPUT, COMPUTE_OPS, RECURRENT_OPS, WEIGHT_INPUT
from qcompile.numerics.qparams import QParams, QuantDType, broadcast_qparams, compute_qparams, dequantize, quantize
from qcompile.passes.quantize.pair_sums import limit_pair_sums, pair_safe_scales
from qcompile.pass_infra import (CalibratedPass, GraphProperty, NodeDecision, NodeStatus, PassContext, PassResult,
                                 StatKind, StatRequest)
from qcompile.passes.quantize.qdq_math import (bias_scale, corrected_bias, int32_bias, is_depthwise_conv,
                                               weight_qparams)
from qcompile.passes.quantize.qdq_rules import is_activation_matmul, is_float_tensor, unsupported_reason, weight_axis
from qcompile.passes.quantize.weight_rounding import RoundingPlan, learned_weight_codes, plan_rounding
from qcompile.selection import NodeSelection, select_nodes

logger = logging.getLogger(__name__)

_WEIGHT_INPUT = dict.fromkeys(COMPUTE_OPS, WEIGHT_INPUT)
_BIAS_INPUT = dict.fromkeys(("Conv", "Gemm"), BIAS_INPUT)     # int32 bias (ConvTranspose keeps a float one)
# ops ORT runs on its u8s8 GEMM (QLinearConv, QGemm, QLinearMatMul, MatMulIntegerToFloat): pair_sums.py applies
_PAIR_SUM_OPS = frozenset({"Conv", "Gemm", "MatMul"})
_BIAS_CORRECTED_OPS = frozenset(_BIAS_INPUT)                  # those bias_correction_delta covers


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
        if node.op in RECURRENT_OPS:
            continue           # QuantizeRecurrentPass's (weights only, no activation Q/DQ)
        if selection is None or not selection.selected:
            if selection is not None and node.op in _WEIGHT_INPUT:
                skipped[node.name] = (node.op, selection.reason)
            continue
        reason = unsupported_reason(node)
        if reason and activation_matmuls and is_activation_matmul(node):
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
            if isinstance(other, gs.Variable) and is_float_tensor(other):
                add_point(other, nodes[producer.name][1].activation, add.name, integer_producer=False)


def format_label(activation: QuantDType, weight: QuantDType) -> str:
    """The decision's reason: "static int8" for 8-bit integers, else the element types ("static fp8")."""
    if activation.is_float and weight.is_float:
        return "static fp8"
    if activation.bits == weight.bits == 8:
        return "static int8"
    return f"static {weight.value} weights, {activation.value} activations"


def _mean_request(tensor_name: str, op: str) -> StatRequest:
    return StatRequest(tensor=tensor_name, kind=StatKind.CHANNEL_MEAN, axis=1 if op == "Conv" else -1)


def _point_request(point: QuantPoint, activation_dtype: QuantDType) -> StatRequest:
    # a float format (FP8) takes its scale from amax; an integer grid's search knows its width (16-bit grids
    # have a negligible rounding term, so the error-minimising range is close to min-max there)
    method = CalibrationMethod.MINMAX if activation_dtype.is_float else point.spec.method
    return StatRequest(tensor=point.tensor.name, kind=StatKind.RANGE, method=method,
                       percentile=point.spec.percentile, symmetric=point.spec.symmetric,
                       unsigned=not activation_dtype.signed, num_bits=activation_dtype.bits)


class InsertQDQPass(CalibratedPass):
    """Insert QuantizeLinear/DequantizeLinear around the selected compute nodes (see module docstring)."""

    requires = frozenset({GraphProperty.NAMED_NODES, GraphProperty.SHAPES_INFERRED})   # selection; MatMul ranks
    ensures = frozenset({GraphProperty.QUANTIZED})
    invalidates = frozenset()      # every Q/DQ output carries its tensor's shape

    def __init__(self, *, subgraph: bool = False, classifier_rule: bool = True) -> None:
        self._plan: QuantPlan | None = None
        self._rounding: RoundingPlan | None = None
        self._subgraph = subgraph                # an If/Loop/Scan body (see passes/quantize_subgraphs.py)
        self._classifier_rule = classifier_rule

    def _plan_for(self, graph: gs.Graph, ctx: PassContext) -> QuantPlan:
        # Selection runs on the graph as the quantize step sees it, so it sees folded weights.
        if self._plan is None:
            selections = select_nodes(graph, ctx.config, subgraph=self._subgraph,
                                      classifier_rule=self._classifier_rule)
            self._plan = plan_quantization(graph, selections, ctx.target,
                                           activation_matmuls=ctx.config.quantize_activation_matmuls)
            # learned rounding of integer weights (not float8) in the main graph only (body tensors are
            # calibrated stacked over iterations)
            self._rounding = plan_rounding([] if self._subgraph else [
                n for n, selection, _ in self._plan.nodes.values() if not selection.weight.dtype.is_float],
                ctx.config)
        return self._plan

    def stat_requests(self, graph: gs.Graph, ctx: PassContext):
        plan = self._plan_for(graph, ctx)
        act = self._activation_dtype(ctx)
        requests = [_point_request(p, act) for p in plan.points.values()]
        if ctx.config.bias_correction:
            requests += [_mean_request(node.inputs[0].name, node.op) for node, _, _ in plan.nodes.values()
                         if node.op in _BIAS_CORRECTED_OPS]
        return requests + [r for r in dict.fromkeys(self._rounding.requests.values()) if r not in requests]

    @staticmethod
    def _activation_dtype(ctx: PassContext) -> QuantDType:
        return ctx.config.activation.dtype or ctx.target.activation_dtype

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        plan = self._plan_for(graph, ctx)
        act_dtype = self._activation_dtype(ctx)
        stats: Counter[str] = Counter()
        act_params = self._activation_params(plan, ctx, act_dtype, stats)
        # Q -> DQ per activation point (remember each node's float input first: rewiring renames it)
        node_input = {name: node.inputs[0].name for name, (node, _, _) in plan.nodes.items()}
        for name, point in plan.points.items():
            self._insert_activation_qdq(graph, point, act_params[name])
            stats["activation_qdq"] += 1
        self._quantize_weights(graph, plan, ctx, act_params, node_input, stats)
        for name in plan.activation_matmuls:
            ctx.decide(NodeDecision(name, "MatMul", NodeStatus.QUANTIZED,
                                    f"{format_label(act_dtype, act_dtype)}, activation x activation",
                                    {"activation_dtype": act_dtype.value}))
            stats["quantized_activation_matmul"] += 1
        for name, (op, reason) in plan.skipped.items():
            ctx.decide(NodeDecision(name, op, NodeStatus.SKIPPED, reason))
            stats["skipped"] += 1
        graph.cleanup().toposort()
        return PassResult(modified=bool(plan.nodes) or bool(plan.activation_matmuls), stats=dict(stats))

    @staticmethod
    def _activation_params(plan: QuantPlan, ctx: PassContext, act_dtype: QuantDType,
                           stats: Counter) -> dict[str, QParams]:
        """(s, z) per activation point from its calibrated range; an inheriting point copies its source's."""
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
        return act_params

    def _quantize_weights(self, graph: gs.Graph, plan: QuantPlan, ctx: PassContext, act_params: dict[str, QParams],
                          node_input: dict[str, str], stats: Counter) -> None:
        """W -> DQ(W_q) and b -> DQ(b_q) (bias-corrected first where asked) for every planned node."""
        profile = ctx.target
        act_dtype = self._activation_dtype(ctx)
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
            # the bias limits the weight scale (see qdq_math.weight_qparams), so it is part of the key
            key = (weight.name, axis, bias.name if bias is not None else None,
                   float(x_params.scale) if bias is not None else None)
            rounding: dict = {}
            depthwise = is_depthwise_conv(node.op, tuple(weight.values.shape), int(node.attrs.get("group", 1)))
            reduce_range = profile.weight_reduce_range(depthwise)
            # only u8 × s8 reaches MLAS's u8s8 GEMM (FP8 and 16-bit formats run other kernels)
            pair_limited = (profile.saturating_pair_sums and not depthwise and node.op in _PAIR_SUM_OPS
                            and act_dtype is QuantDType.UINT8 and selection.weight.dtype is QuantDType.INT8)
            if key not in weight_cache:
                weight_cache[key] = self._insert_weight_dq(graph, weight, axis, selection.weight,
                                                           reduce_range,
                                                           bias if profile.quantize_bias else None, x_params,
                                                           copy=sum(k[0] == weight.name for k in weight_cache),
                                                           round_codes=self._round_codes(node, ctx, correct, rounding),
                                                           pair_limit=(node.op, bool(node.attrs.get("transB", 0)))
                                                           if pair_limited else None, detail=rounding)
                stats["learned_rounding"] += rounding.get("rounding") == "learned"
            w_out, w_params, w_quantized = weight_cache[key]
            node.inputs[w_index] = w_out
            detail = {"weight_dtype": selection.weight.dtype.value, "per_channel": axis is not None,
                      "reduce_range": reduce_range, "activation_dtype": act_dtype.value,
                      "input_scale": float(x_params.scale), **rounding}
            if bias is not None:
                bias_scale(x_params, w_params, node.name)   # before bias correction, which overflows alike
                if correct:
                    mean = ctx.range_of(_mean_request(node_input[name], node.op)).min
                    values, detail["bias_correction_max"] = corrected_bias(
                        node.op, bias.values, weight.values, dequantize(w_quantized, w_params), mean,
                        int(node.attrs.get("group", 1)), bool(node.attrs.get("transB", 0)), node.name)
                    bias = gs.Constant(f"{bias.name}_corrected_{name}", values)
                    stats["bias_corrected"] += 1
                if profile.quantize_bias:
                    node.inputs[b_index] = self._insert_bias_dq(graph, bias, x_params, w_params, node.name)
                    detail["bias"] = "int32"
                else:   # the runtime quantises the bias itself (TensorRT)
                    node.inputs[b_index] = bias
                    detail["bias"] = "float"
            ctx.decide(NodeDecision(name, node.op, NodeStatus.QUANTIZED,
                                    format_label(act_dtype, selection.weight.dtype), detail))
            stats["quantized"] += 1
            stats[f"quantized_{node.op}"] += 1

    def _round_codes(self, node: gs.Node, ctx: PassContext, bias_corrected: bool, detail: dict):
        """The learned-rounding function for this node's weight (filling ``detail``), or None: nearest."""
        request = self._rounding.requests.get(node.name) if self._rounding else None
        if request is None or request not in ctx.statistics:
            if self._rounding and node.name in self._rounding.declined:
                detail["rounding"] = self._rounding.declined[node.name]
            return None

        def round_codes(values: np.ndarray, params: QParams, reduce_range: bool) -> np.ndarray:
            codes, found = learned_weight_codes(node, values, params, reduce_range, ctx.statistics[request],
                                                bias_corrected, ctx.config.rounding.max_sweeps)
            detail.update(found)
            return codes
        return round_codes

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
        replace_uses(tensor, dequantized, consumers)
        graph.nodes.extend([q_node, dq_node])
        return dequantized

    @staticmethod
    def _insert_weight_dq(graph: gs.Graph, weight: gs.Constant, axis: int | None, spec: QuantSpec,
                          reduce_range: bool, bias: gs.Constant | None,
                          x_params: QParams, copy: int = 0, round_codes=None,
                          pair_limit: tuple[str, bool] | None = None,
                          detail: dict | None = None) -> tuple[gs.Variable, QParams, np.ndarray]:
        values = weight.values.astype(np.float32)
        params = weight_qparams(values, axis, spec, reduce_range, bias.values if bias is not None else None, x_params)
        if pair_limit is not None and spec.symmetric:
            params = dataclasses.replace(params, scale=pair_safe_scales(
                pair_limit[0], values, params.scale, pair_limit[1], per_channel=axis is not None))
        q_values = quantize(values, params) if round_codes is None else round_codes(values, params, reduce_range)
        if pair_limit is not None:      # x86 without VNNI: no u8s8 pair sum may saturate (pair_sums.py)
            scale, zero_point = broadcast_qparams(params, values.ndim)
            q_values, changed = limit_pair_sums(pair_limit[0], q_values, values / scale + zero_point, pair_limit[1])
            if detail is not None:
                detail["pair_limited_codes"] = changed
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
        values = bias.values
        q_bias = int32_bias(values, scale)
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
