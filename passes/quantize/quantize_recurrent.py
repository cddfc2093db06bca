"""Int8 weights for LSTM / GRU / RNN, in the main graph and in every If/Loop/Scan body.

A recurrent node holds W ∈ R^{D×G·H×I} (input weights) and R ∈ R^{D×G·H×H} (recurrence weights), D directions,
G gates (LSTM 4, GRU 3, RNN 1), H hidden units. Each is stored as int8, symmetric, one scale per direction and
gate row (the row r of W[d] produces gate pre-activation r, so its scale follows that unit's weights alone):

    s[d, r]      = max_k |W[d, r, k]| / 127                      (1 for an all-zero row)
    W_q[d, r, k] = clip(round(W[d, r, k] / s[d, r]), -127, 127)   (for DynamicQuantizeLSTM on x86 without VNNI
                                                                   pairs limited, see rewrite_as_dynamic_lstm)
    W ≈ s[d, r] · W_q[d, r, k]

Two forms reach the runtime (``RecurrentForm``):

    DEQUANTIZE_LINEAR   W -> DequantizeLinear(W_q, s, 0; axis)   (D = 1: axis 1 on [1, G·H, I]; D = 2: axis 0 on
                        W_q as [D·G·H, I], then a Reshape to [D, G·H, I]); the node itself is unchanged, so biases,
                        initial states, peepholes and the recurrence (gates, h_t, c_t) stay float. Any target.
    DYNAMIC_QUANTIZE    LSTM -> com.microsoft DynamicQuantizeLSTM(X, W_qᵀ, R_qᵀ, B, ..., s_W, 0, s_R, 0): the
                        weights transposed to [D, I, 4H] / [D, H, 4H], X and h_t quantised per tensor to uint8 at
                        run time and multiplied on integers. CPU target only (ORT has only a CPU kernel).

The choice between them is ``choose_form`` (the rule and the measurement behind it are in its docstring).
"""

from __future__ import annotations

import enum
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.config import Target
from qcompile.graph.edits import Namer
from qcompile.graph.ops import RECURRENT_OPS
from qcompile.graph.scopes import all_graphs
from qcompile.passes.quantize.pair_sums import nearest_limited_codes, pair_safe_row_scales
from qcompile.pass_infra import GraphPass, GraphProperty, NodeDecision, NodeStatus, PassContext, PassResult
from qcompile.selection import NodeSelection, select_nodes

RECURRENT_WEIGHT_INPUTS = (1, 2)            # W, R in LSTM, GRU and RNN
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
CONTRIB_DOMAIN = "com.microsoft"
# DynamicQuantizeLSTM pays a per-step quantisation of x and h_t; below this many units its int8 GEMMs are too
# small to win that back (benchmarks/recurrent_forms.py, see choose_form)
DYNAMIC_MIN_HIDDEN = 64


class RecurrentForm(enum.Enum):
    DEQUANTIZE_LINEAR = "dequantize_linear"
    DYNAMIC_QUANTIZE = "dynamic_quantize"


def quantize_rows(weight: np.ndarray, q_max: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """[D, G·H, K] float -> (int8 codes in [-q_max, q_max] of that shape, float32 scales [D, G·H]): symmetric
    per gate row."""
    absmax = np.abs(weight.astype(np.float64)).max(axis=-1)
    # floor at the smallest normal float32: a row of subnormals would otherwise get scale 0 after the cast
    scale = np.where(absmax > 0, np.maximum(absmax / float(q_max), np.finfo(np.float32).tiny), 1.0).astype(np.float32)
    codes = np.clip(np.rint(weight / scale[..., None]), -q_max, q_max).astype(np.int8)
    return codes, scale


def pair_limited_rows(weight: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and scales [D, G·H] of ``weight`` [D, G·H, K] whose u8s8 pair sums along K cannot saturate: per
    gate row the least-error grid of passes/quantize/pair_sums.py, its codes' pairs limited."""
    k = weight.shape[-1]
    rows = weight.reshape(-1, k)
    safe = pair_safe_row_scales(rows, scale.reshape(-1)).astype(np.float32)
    codes = nearest_limited_codes(rows, safe[:, None])
    return codes.astype(np.int8).reshape(weight.shape), safe.reshape(scale.shape)


def dequantize_rows(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float weight the runtime sees: s[d, r] · W_q[d, r, k]."""
    return (codes.astype(np.float32) * scale[..., None]).astype(np.float32)


def unsupported_reason(node: gs.Node) -> str:
    """Why the node's weights cannot be quantised here, or "" when they can."""
    for index in RECURRENT_WEIGHT_INPUTS:
        tensor = node.inputs[index] if len(node.inputs) > index else None
        if not isinstance(tensor, gs.Constant):
            return f"{'WR'[index - 1]} is not a constant"
        values = tensor.values
        if values.dtype != np.float32 or values.ndim != 3 or values.size == 0:
            return f"{'WR'[index - 1]} is {values.dtype} of shape {list(values.shape)} (needs float32 [D, G·H, K])"
        if not np.isfinite(values).all():
            return f"{'WR'[index - 1]} holds NaN or Inf values"
    return ""


def choose_form(node: gs.Node, target: Target) -> tuple[RecurrentForm, str]:
    """DynamicQuantizeLSTM where ORT's integer kernel is the faster of the two and its error acceptable, else DQ.

    Rule: an LSTM on the CPU target with layout 0 and hidden_size >= DYNAMIC_MIN_HIDDEN becomes
    DynamicQuantizeLSTM; GRU and RNN (no integer kernel in ORT), smaller LSTMs and other targets take the
    DequantizeLinear form. Measured (benchmarks/recurrent_forms.py --bidirectional, T = 40, I = H, 1 thread, ORT
    1.32, a loaded 2-core machine): median ms float / DQ form / dynamic: H 8: 0.031 / 0.037 / 0.055, H 32:
    0.064 / 0.059 / 0.061, H 64: 0.108 / 0.139 / 0.088, H 128: 0.46 / 0.73 / 0.28, H 512: 34.9 / 34.1 / 2.4.
    A second run: H 64: 0.153 / 0.213 / 0.130, H 128: 0.46 / 0.45 / 0.18, H 512: 53.0 / 54.9 / 8.3.
    The DQ form dequantises W and R on every run, so it is never faster than float. Error (relative L2 of Y vs
    float): dynamic 0.7-1.2 %, DQ form 0.3-0.45 %; the dynamic kernel's extra error is that of 8-bit per-tensor
    activations, the same as every static-Q/DQ Conv/MatMul input, so it is accepted."""
    if node.op != "LSTM":
        return RecurrentForm.DEQUANTIZE_LINEAR, f"ORT has no integer {node.op} kernel"
    if target is not Target.CPU:
        return RecurrentForm.DEQUANTIZE_LINEAR, f"DynamicQuantizeLSTM has no {target.value} kernel"
    if node.attrs.get("layout", 0) != 0:
        return RecurrentForm.DEQUANTIZE_LINEAR, "DynamicQuantizeLSTM takes layout 0 only"
    hidden = int(node.attrs.get("hidden_size", node.inputs[2].values.shape[-1]))
    if hidden < DYNAMIC_MIN_HIDDEN:
        return RecurrentForm.DEQUANTIZE_LINEAR, f"hidden_size {hidden} < {DYNAMIC_MIN_HIDDEN}: the integer kernel is no faster"
    return RecurrentForm.DYNAMIC_QUANTIZE, f"hidden_size {hidden} >= {DYNAMIC_MIN_HIDDEN} on the CPU: integer kernel"


def plan_recurrent(node: gs.Node, selection: NodeSelection, target: Target) -> tuple[RecurrentForm | None, str]:
    """(form, why) for a selected, quantisable recurrent node, else (None, why it stays float)."""
    reason = selection.reason if not selection.selected else unsupported_reason(node)
    if reason:
        return None, reason
    return choose_form(node, target)


def float_kernel_by_design(decision: NodeDecision) -> bool:
    """A quantised recurrent node in the DequantizeLinear form: ORT runs its float kernel on the DQ'd weights."""
    return decision.op_type in RECURRENT_OPS and decision.detail.get("form") == RecurrentForm.DEQUANTIZE_LINEAR.value


def insert_weight_dequantize(graph: gs.Graph, namer: Namer, weight: gs.Constant) -> gs.Variable:
    """DequantizeLinear(W_q, s) [-> Reshape] producing a float tensor of W's shape, appended to ``graph``."""
    codes, scale = quantize_rows(weight.values)
    directions, rows, cols = codes.shape
    out = gs.Variable(namer(f"{weight.name}_dequantized"), dtype=np.float32, shape=list(codes.shape))
    zero = np.zeros(directions * rows, np.int8)
    if directions == 1:
        graph.nodes.append(gs.Node("DequantizeLinear", name=namer(f"{weight.name}_DQ"), attrs={"axis": 1}, inputs=[
            namer.constant(f"{weight.name}_int8", codes), namer.constant(f"{weight.name}_scale", scale[0]),
            namer.constant(f"{weight.name}_zp", zero)], outputs=[out]))
        return out
    flat = gs.Variable(namer(f"{weight.name}_dequantized_rows"), dtype=np.float32, shape=[directions * rows, cols])
    graph.nodes.append(gs.Node("DequantizeLinear", name=namer(f"{weight.name}_DQ"), attrs={"axis": 0}, inputs=[
        namer.constant(f"{weight.name}_int8", codes.reshape(directions * rows, cols)),
        namer.constant(f"{weight.name}_scale", scale.reshape(-1)), namer.constant(f"{weight.name}_zp", zero)],
        outputs=[flat]))
    graph.nodes.append(gs.Node("Reshape", name=namer(f"{weight.name}_Reshape"), outputs=[out], inputs=[
        flat, namer.constant(f"{weight.name}_shape", np.array(codes.shape, np.int64))]))
    return out


def rewrite_as_dynamic_lstm(node: gs.Node, namer: Namer, reduce_range: bool = False,
                            saturating_pair_sums: bool = False) -> None:
    """Rewrite the LSTM in place as com.microsoft DynamicQuantizeLSTM (same outputs, optional inputs kept).

    The kernel multiplies uint8 x and h_t by the int8 weights in MLAS's u8s8 GEMM (K = the row's last axis),
    which on x86 without VNNI sums pairs of products in saturating int16 (measured on such a host: 20 % relative
    error of Y with plain 8-bit codes, ~1 % with the pairs limited). ``saturating_pair_sums``: pairs limited
    (passes/quantize/pair_sums.py); ``reduce_range``: 7-bit codes ([-63, 63])."""
    quantized = []
    for index in RECURRENT_WEIGHT_INPUTS:
        weight = node.inputs[index]
        codes, scale = quantize_rows(weight.values, 63 if reduce_range else 127)
        if saturating_pair_sums:
            codes, scale = pair_limited_rows(weight.values, scale)
        quantized += [namer.constant(f"{weight.name}_int8_t", np.ascontiguousarray(codes.transpose(0, 2, 1))),
                      namer.constant(f"{weight.name}_scale", scale),
                      namer.constant(f"{weight.name}_zp", np.zeros(scale.shape, np.int8))]
    optional = list(node.inputs[3:8]) + [gs.Variable.empty()] * (8 - max(len(node.inputs), 3))
    node.inputs = [node.inputs[0], quantized[0], quantized[3], *optional,
                   quantized[1], quantized[2], quantized[4], quantized[5]]
    node.op, node.domain = "DynamicQuantizeLSTM", CONTRIB_DOMAIN
    node.attrs.pop("layout", None)


class QuantizeRecurrentPass(GraphPass):
    """int8 W and R for the selected LSTM/GRU/RNN nodes of every graph (see the module docstring)."""

    requires = frozenset({GraphProperty.NAMED_NODES})
    invalidates = frozenset()          # outputs keep their shapes and types

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        namer = Namer(graph)
        scopes = list(all_graphs(graph))
        for scope in scopes[1:]:
            namer.taken |= set(scope.tensors()) | {n.name for n in scope.nodes}   # names are unique model-wide
        for scope in scopes:
            selections = select_nodes(scope, ctx.config, subgraph=scope is not graph)
            changed = False
            for node in [n for n in scope.nodes if n.op in RECURRENT_OPS]:
                op = node.op                           # the decision names the op the user wrote
                form, reason = plan_recurrent(node, selections[node.name], ctx.config.target)
                if form is None:
                    ctx.decide(NodeDecision(node.name, op, NodeStatus.SKIPPED, reason))
                    stats["skipped"] += 1
                    continue
                detail = {"weight_dtype": "int8", "granularity": "gate row", "form": form.value,
                          "form_reason": reason, "weights": [node.inputs[i].name for i in RECURRENT_WEIGHT_INPUTS]}
                if form is RecurrentForm.DYNAMIC_QUANTIZE:
                    reduce_range = ctx.target.weight_reduce_range(depthwise=False)
                    rewrite_as_dynamic_lstm(node, namer, reduce_range, ctx.target.saturating_pair_sums)
                    detail.update(reduce_range=reduce_range, pair_limited=ctx.target.saturating_pair_sums)
                else:
                    for index in RECURRENT_WEIGHT_INPUTS:
                        node.inputs[index] = insert_weight_dequantize(scope, namer, node.inputs[index])
                ctx.decide(NodeDecision(node.name, op, NodeStatus.QUANTIZED, "int8 W and R per gate row", detail))
                stats[f"quantized_{form.value}"] += 1
                stats["quantized" if scope is graph else "subgraph_quantized"] += 1
                changed = True
            if changed:
                scope.toposort()
        if stats["quantized"] or stats["subgraph_quantized"]:
            graph.cleanup()
        return PassResult(modified=bool(stats["quantized"] or stats["subgraph_quantized"]), stats=dict(stats))
