"""Weight-only quantisation (presets w4a16, w8a16): MatMul/Gemm weights in blocks along K, activations float.

For each selected node y = x·W (+ b) with a constant W [K, N] (Gemm: transA = 0, alpha = beta = 1; W = Bᵀ
when transB) the pass computes Ŵ = blocks(codes, scales, zero points) with RTN, GPTQ or AWQ
(qcompile.numerics.weight_only; GPTQ/AWQ use H = E[x xᵀ] of the node's input from calibration) and emits

    DEQUANTIZE_LINEAR   y = MatMul(x, DequantizeLinear(W_q, s, z; axis=0, block_size=bs)) (+ Add b)   opset 21
    MATMUL_NBITS        y = MatMulNBits(x, B, s[, z][, b]; accuracy_level)                         com.microsoft
    NF4                 y = MatMulBnb4(x, B_nf4, absmax)                                            com.microsoft

(the target profile picks the integer form, runtime_ext/matmul_nbits.choose_form). AWQ scales the input
channels: x·W = (x / s)·(diag(s)·W); 1/s is folded into the constant scale (and bias) of a LayerNormalization or
a constant Mul that produces x when x feeds only the quantised nodes, otherwise a Mul(x, 1/s) is inserted.
The final classifier (lm_head) gets ``lm_head_bits`` unless quantize_classifier asks for the preset's bits.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from qcompile.config import NumberFormat, ScaleDType, WeightOnlyAlgorithm, WeightOnlyConfig, WeightOnlyForm
from qcompile.graph.edits import replace_uses
from qcompile.numerics.packing import pack_4bit
from qcompile.pass_infra import (CalibratedPass, GraphProperty, NodeDecision, NodeStatus, PassContext, PassResult,
                                 StatKind, StatRequest)
from qcompile.runtime_ext.matmul_nbits import (FormChoice, choose_form, form_for_node, fp16_safe_scales,
                                               matmul_bnb4_nodes, matmul_nbits_nodes, scale_input)
from qcompile.selection import classifier_nodes, select_nodes
from qcompile.numerics.weight_only import BlockQuantized, BlockSpec, awq, gptq, relative_output_error, rtn

logger = logging.getLogger(__name__)

_OPS = ("MatMul", "Gemm")


@dataclass
class WeightOnlyTarget:
    """One node to quantise: its weight as W [K, N], its bias (Gemm) and the bits it gets."""

    node: gs.Node
    weight: np.ndarray
    bias: gs.Constant | None
    bits: int
    role: str               # "matmul" or "lm_head"


def _unsupported_reason(node: gs.Node) -> str:
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return "activation x activation MatMul (no constant weight)" if node.op == "MatMul" else \
            "weight is not a constant"
    values = node.inputs[1].values
    if values.dtype != np.float32:
        return f"weight dtype {values.dtype} is not float32"
    if values.ndim != 2 or values.size == 0:
        return f"weight of rank {values.ndim} (weight-only needs a 2-D matrix)"
    if node.op == "Gemm":
        if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
            return "Gemm with transA or alpha/beta != 1"
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name \
                and not isinstance(node.inputs[2], gs.Constant):
            return "Gemm bias is not a constant"
    return ""


def plan_weight_only(graph: gs.Graph, ctx: PassContext) -> tuple[list[WeightOnlyTarget], dict[str, tuple[str, str]]]:
    """Which nodes get which bits (see the module docstring); the rest are skipped with a reason."""
    config = ctx.config
    selections = select_nodes(graph, dataclasses.replace(config, quantize_classifier=True))
    heads = set() if config.quantize_classifier else classifier_nodes(graph)
    preset_bits = config.preset.weight_only_bits
    targets: list[WeightOnlyTarget] = []
    skipped: dict[str, tuple[str, str]] = {}
    for node in graph.nodes:
        selection = selections.get(node.name)
        if node.op not in _OPS or selection is None:
            continue
        if not selection.selected:
            skipped[node.name] = (node.op, selection.reason)
            continue
        reason = _unsupported_reason(node)
        if reason:
            skipped[node.name] = (node.op, reason)
            continue
        bits, role = preset_bits, "matmul"
        if node.name in heads:
            bits, role = config.weight_only.lm_head_bits, "lm_head"
            if bits is None:
                skipped[node.name] = (node.op, "lm_head kept float (weight_only.lm_head_bits = none)")
                continue
        weight = node.inputs[1].values
        if node.op == "Gemm" and node.attrs.get("transB", 0):
            weight = weight.T
        bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and \
            isinstance(node.inputs[2], gs.Constant) else None
        if config.weight_only.number_format is NumberFormat.NF4 and bits == 4 \
                and weight.shape[0] % config.weight_only.block_size:
            skipped[node.name] = (node.op, f"nf4 needs K ({weight.shape[0]}) divisible by the block size")
            continue
        targets.append(WeightOnlyTarget(node, np.ascontiguousarray(weight, dtype=np.float32), bias, bits, role))
    return targets, skipped


def _hessian_request(tensor: str) -> StatRequest:
    return StatRequest(tensor=tensor, kind=StatKind.HESSIAN)


class WeightOnlyQuantizePass(CalibratedPass):
    """Blocked INT4/INT8 (or NF4) weights for MatMul/Gemm; see the module docstring."""

    requires = frozenset({GraphProperty.NAMED_NODES, GraphProperty.SHAPES_INFERRED})   # selection; input ranks
    ensures = frozenset({GraphProperty.QUANTIZED})

    def __init__(self) -> None:
        self._plan: tuple[list[WeightOnlyTarget], dict[str, tuple[str, str]]] | None = None

    def _plan_for(self, graph: gs.Graph, ctx: PassContext):
        if self._plan is None:
            self._plan = plan_weight_only(graph, ctx)
        return self._plan

    def stat_requests(self, graph: gs.Graph, ctx: PassContext):
        targets, _ = self._plan_for(graph, ctx)
        inputs = {t.node.inputs[0].name: t.weight.shape[0] for t in targets}
        hessian_bytes = 8 * sum(k * k for k in inputs.values())
        budget = ctx.config.calibration.memory_budget_mb << 20
        config = ctx.config.weight_only
        if config.algorithm is WeightOnlyAlgorithm.RTN and not config.clip_search and hessian_bytes > budget:
            # RTN needs no data; H (O(K²) per input) only adds the report's output errors, so not past the budget
            logger.info("RTN without Hessians: they would take %d MiB", hessian_bytes >> 20)
            return []
        if hessian_bytes > budget:
            logger.warning("input Hessians take %d MiB (over the %d MiB calibration budget)", hessian_bytes >> 20,
                           budget >> 20)
        return [_hessian_request(name) for name in inputs]

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        targets, skipped = self._plan_for(graph, ctx)
        config = ctx.config.weight_only
        choice = choose_form(ctx.config.target, config)
        stats: Counter[str] = Counter()
        groups: dict[tuple[str, int], list[WeightOnlyTarget]] = defaultdict(list)
        for target in targets:
            groups[(target.node.inputs[0].name, target.bits)].append(target)
        for (tensor, bits), members in groups.items():
            spec = BlockSpec(bits, config.block_size, config.symmetric,
                             nf4=bits == 4 and config.number_format is NumberFormat.NF4)
            request = _hessian_request(tensor)
            hessian = ctx.statistics.get(request) if config.algorithm is WeightOnlyAlgorithm.RTN \
                else ctx.range_of(request)
            quantized, input_scale, alpha = quantize_weights([m.weight for m in members], spec, config, hessian)
            if input_scale is not None:
                stats[_apply_input_scale(graph, members, input_scale)] += 1
            for target, q in zip(members, quantized):
                x = target.node.inputs[0]
                node_choice = form_for_node(choice, config, [c.op for c in target.node.outputs[0].outputs],
                                            len(x.shape) if x.shape is not None else None)
                form = _emit(graph, target, q, node_choice, config.scale_dtype)
                detail = {"bits": bits, "block_size": spec.block_size, "symmetric": spec.symmetric,
                          "number_format": "nf4" if spec.nf4 else "integer", "algorithm": config.algorithm.value,
                          "form": form, "role": target.role,
                          "accuracy_level": node_choice.accuracy_level if form == "MatMulNBits" else None,
                          "form_reason": node_choice.reason}
                if alpha is not None:
                    detail["awq_alpha"] = alpha
                if hessian is not None:
                    w_hat = q.dequantize() if input_scale is None else q.dequantize() / input_scale[:, None]
                    detail["relative_output_error"] = relative_output_error(target.weight, w_hat, hessian.hessian)
                ctx.decide(NodeDecision(target.node.name, target.node.op, NodeStatus.QUANTIZED,
                                        "weight-only nf4" if spec.nf4 else f"weight-only int{bits}", detail))
                stats["quantized"] += 1
                stats[f"form_{form}"] += 1
                stats[f"bits_{bits}"] += 1
        for name, (op, reason) in skipped.items():
            ctx.decide(NodeDecision(name, op, NodeStatus.SKIPPED, reason))
            stats["skipped"] += 1
        graph.cleanup().toposort()
        return PassResult(modified=bool(targets), stats=dict(stats))


def quantize_weights(weights: list[np.ndarray], spec: BlockSpec, config: WeightOnlyConfig, hessian
                     ) -> tuple[list[BlockQuantized], np.ndarray | None, float | None]:
    """Quantise the weights W_i [K, N] of the nodes reading one input (H, a of that input for GPTQ/AWQ; None
    for RTN without data): (quantised weights, AWQ input scale s, AWQ α)."""
    if config.algorithm is WeightOnlyAlgorithm.AWQ:
        scale, alpha, quantized = awq(weights, hessian.hessian, hessian.abs_mean, spec,
                                      grid=config.awq_grid, clip_search=config.clip_search)
        return quantized, scale, alpha
    if config.algorithm is WeightOnlyAlgorithm.GPTQ:
        return [gptq(w, hessian.hessian, spec, damping=config.damping, batch=config.gptq_batch,
                     act_order=config.act_order, clip_search=config.clip_search) for w in weights], None, None
    importance = None if hessian is None else np.diag(hessian.hessian)
    return [rtn(w, spec, clip_search=config.clip_search, importance=importance) for w in weights], None, None


def _emit(graph: gs.Graph, target: WeightOnlyTarget, q: BlockQuantized, choice: FormChoice,
          scale_dtype: ScaleDType) -> str:
    """Replace the node by the chosen form; the compute node keeps the original name. Returns its op type."""
    node, name = target.node, target.node.name
    x, y = node.inputs[0], node.outputs[0]
    q = dataclasses.replace(q, scales=fp16_safe_scales(q.scales, scale_dtype))
    node.outputs = []
    graph.nodes.remove(node)
    if q.spec.nf4:
        graph.nodes.extend(matmul_bnb4_nodes(name, x, _bias_output(graph, target, y), q))
        return "MatMulBnb4"
    if choice.form is WeightOnlyForm.MATMUL_NBITS:
        graph.nodes.extend(matmul_nbits_nodes(name, x, y, q, choice.accuracy_level, target.bias, scale_dtype))
        return "MatMulNBits"
    nodes: list[gs.Node] = []
    inputs = [_codes_constant(f"{name}_W_q", q.codes, q.spec),
              scale_input(f"{name}_W_scale", q.scales, scale_dtype, nodes)]
    if q.zero_points is not None:
        inputs.append(_codes_constant(f"{name}_W_zp", q.zero_points, dataclasses.replace(q.spec, symmetric=False)))
    w_dq = gs.Variable(f"{name}_W_dq", dtype=np.float32, shape=list(q.codes.shape))
    nodes.append(gs.Node("DequantizeLinear", name=f"{name}_W_DQ", inputs=inputs, outputs=[w_dq],
                         attrs={"axis": 0, "block_size": q.spec.block_size}))
    nodes.append(gs.Node("MatMul", name=name, inputs=[x, w_dq], outputs=[_bias_output(graph, target, y)]))
    graph.nodes.extend(nodes)
    return "DequantizeLinear+MatMul"


def _bias_output(graph: gs.Graph, target: WeightOnlyTarget, y: gs.Variable) -> gs.Variable:
    """The MatMul's output: y itself, or a new tensor followed by Add(bias) -> y for a Gemm with a bias."""
    if target.bias is None:
        return y
    pre = gs.Variable(f"{target.node.name}_matmul_out", dtype=np.float32)
    graph.nodes.append(gs.Node("Add", name=f"{target.node.name}_bias", inputs=[pre, target.bias], outputs=[y]))
    return pre


def _codes_constant(name: str, codes: np.ndarray, spec: BlockSpec) -> gs.Constant:
    """int8/uint8 codes as they are; 4-bit codes packed two per byte into an INT4/UINT4 TensorProto."""
    if spec.bits == 8:
        return gs.Constant(name, codes.astype(np.int8 if spec.symmetric else np.uint8))
    proto = onnx.TensorProto()
    proto.name = name
    proto.data_type = onnx.TensorProto.INT4 if spec.symmetric else onnx.TensorProto.UINT4
    proto.dims.extend(codes.shape)
    proto.raw_data = pack_4bit(codes).tobytes()
    return gs.Constant(name, LazyValues(proto))


def _apply_input_scale(graph: gs.Graph, members: list[WeightOnlyTarget], scale: np.ndarray) -> str:
    """x -> x / s for the group's nodes: folded into the producer's constants where only they read x."""
    x = members[0].node.inputs[0]
    inverse = (1.0 / scale).astype(np.float32)
    names = {m.node.name for m in members}
    producer = x.inputs[0] if len(x.inputs) == 1 else None
    only_group = all(c.name in names for c in x.outputs) and x not in graph.outputs
    if only_group and producer is not None and _fold_into(producer, inverse):
        return f"awq_folded_{producer.op}"
    scaled = gs.Variable(f"{x.name}_awq_scaled", dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node("Mul", name=f"{x.name}_awq_Mul", inputs=[x, gs.Constant(f"{x.name}_awq_inv_s", inverse)],
                               outputs=[scaled]))
    replace_uses(x, scaled, [m.node for m in members])
    return "awq_inserted_mul"


def _fold_into(producer: gs.Node, inverse: np.ndarray) -> bool:
    """Multiply the constant per-channel parameters of a LayerNormalization (scale, bias) or of a Mul by 1/s."""
    k = inverse.size
    if producer.op == "LayerNormalization" and producer.attrs.get("axis", -1) in (-1,):
        params = [t for t in producer.inputs[1:3] if t is not None and t.name]
    elif producer.op == "Mul":
        params = [t for t in producer.inputs if isinstance(t, gs.Constant)][:1]
        if len(params) != 1 or len(producer.inputs) != 2:
            return False
    else:
        return False
    if not all(isinstance(t, gs.Constant) and t.values.shape[-1:] == (k,) and t.values.size == k for t in params):
        return False
    for index, tensor in enumerate(producer.inputs):
        if any(tensor is p for p in params):
            producer.inputs[index] = gs.Constant(f"{tensor.name}_awq_{producer.name}",
                                                 (tensor.values * inverse.reshape(tensor.values.shape)).astype(
                                                     tensor.values.dtype))
    return True
