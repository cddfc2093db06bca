"""Learned rounding inside static weight quantisation (InsertQDQPass): W_q = q + z with q ∈ {⌊W/s⌋, ⌈W/s⌉}
chosen per weight to minimise the node's mean squared output error on the calibration inputs.

A node y = W ⊛ x is seen as rows: output channel o has the weight row w_o (Conv: W[o] flattened over
(c, k_1, .., k_d); Gemm/MatMul: the column of W that produces output o) and reads the patches P of its group
(numerics.patches). With the calibrated patch moments H_g = E[P Pᵀ] and μ_g = E[P] (calibrators/patch_moments)
the levels come from numerics.rounding.learned_levels on

    H_g                 without bias correction: E[(ŵ_o·P − w_o·P)²]
    Σ_g = H_g − μ_g μ_gᵀ  with bias correction (Conv, Gemm): the bias then removes the mean error (ŵ_o − w_o)·μ

The moments are taken on the float graph (the inputs the FP32 model sees), in the same calibration pass as the
activation ranges. Layers whose patch is longer than ``RoundingConfig.max_patch``, or whose statistics would
push the total past the calibration memory budget, keep nearest rounding (with the reason in the report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.config import CompileConfig, WeightRounding
from qcompile.numerics.patches import PatchGeometry, PatchMoments
from qcompile.numerics.qparams import QParams
from qcompile.numerics.rounding import centred, learned_levels
from qcompile.pass_infra import StatKind, StatRequest

ROUNDED_OPS = frozenset({"Conv", "Gemm", "MatMul"})
BATCHED_HESSIAN_ELEMENTS = 1 << 22      # per-row K×K stacks up to 32 MiB (depthwise Convs); larger: per group


@dataclass(frozen=True)
class RoundingPlan:
    """Which nodes get learned rounding (their patch-moment requests) and why the others do not."""

    requests: dict[str, StatRequest]
    declined: dict[str, str]


def plan_rounding(nodes: list[gs.Node], config: CompileConfig) -> RoundingPlan:
    """A patch-moment request per node whose weight can be learned-rounded within the budgets."""
    requests: dict[str, StatRequest] = {}
    declined: dict[str, str] = {}
    if config.rounding.method is not WeightRounding.LEARNED:
        return RoundingPlan(requests, declined)
    budget = config.calibration.memory_budget_mb << 20
    used = 0
    for node in nodes:
        reason, request, groups, patch = rounding_request(node, config)
        if request is None:
            declined[node.name] = reason
            continue
        cost = groups * patch * (patch + 1) * 8
        if request not in requests.values():
            if used + cost > budget:
                declined[node.name] = "learned rounding: its input statistics exceed the calibration memory budget"
                continue
            used += cost
        requests[node.name] = request
    return RoundingPlan(requests, declined)


def rounding_request(node: gs.Node, config: CompileConfig) -> tuple[str, StatRequest | None, int, int]:
    """(reason declined, request, groups, patch length) for one node."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if node.op not in ROUNDED_OPS:
        return f"learned rounding: {node.op} keeps nearest rounding", None, 0, 0
    if not isinstance(weight, gs.Constant):
        return "learned rounding: no constant weight", None, 0, 0
    shape = weight.values.shape
    geometry = None
    if node.op == "Conv":
        rank = len(shape) - 2
        if rank not in (1, 2):
            return f"learned rounding: {rank}-d Conv", None, 0, 0
        geometry = PatchGeometry(
            kernel=tuple(int(k) for k in shape[2:]),
            strides=tuple(int(s) for s in node.attrs.get("strides", [1] * rank)),
            dilations=tuple(int(d) for d in node.attrs.get("dilations", [1] * rank)),
            pads=tuple(int(p) for p in node.attrs.get("pads", [0] * 2 * rank)),
            group=int(node.attrs.get("group", 1)), auto_pad=str(node.attrs.get("auto_pad", "NOTSET")))
        groups, patch = geometry.group, int(np.prod(shape[1:]))
    elif len(shape) != 2 or (node.op == "Gemm" and node.attrs.get("transA", 0)):
        return "learned rounding: not a matrix weight on untransposed rows", None, 0, 0
    else:
        groups, patch = 1, int(shape[1] if node.op == "Gemm" and node.attrs.get("transB", 0) else shape[0])
    if patch > config.rounding.max_patch:
        return f"learned rounding: patch of {patch} > max_patch {config.rounding.max_patch}", None, 0, 0
    return "", StatRequest(tensor=node.inputs[0].name, kind=StatKind.PATCH_MOMENTS,
                           sample_rows=config.rounding.rows_per_batch, patch=geometry), groups, patch


def weight_rows(node: gs.Node, values: np.ndarray) -> np.ndarray:
    """The weight as rows [outputs, patch] (see module docstring)."""
    if node.op == "Conv":
        return values.reshape(values.shape[0], -1)
    return values if node.op == "Gemm" and node.attrs.get("transB", 0) else values.T


def rows_to_weight(node: gs.Node, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if node.op == "Conv":
        return rows.reshape(shape)
    return rows if node.op == "Gemm" and node.attrs.get("transB", 0) else rows.T


def learned_weight_codes(node: gs.Node, values: np.ndarray, params: QParams, reduce_range: bool,
                         moments: PatchMoments, centre: bool, max_sweeps: int) -> tuple[np.ndarray, dict]:
    """Integer codes of ``values`` (the layout and dtype quantize() gives) and the report's per-layer detail."""
    rows = weight_rows(node, values.astype(np.float64))
    outputs = rows.shape[0]
    scale = np.broadcast_to(np.asarray(params.scale, np.float64).reshape(-1), (outputs,)).copy()
    zero = np.broadcast_to(np.asarray(params.zero_point, np.int64).reshape(-1), (outputs,))
    q_min, q_max = params.dtype.int_range(reduce_range)
    low, high = (q_min - zero).astype(np.float64), (q_max - zero).astype(np.float64)
    # symmetric (zero point mid-range): never the lone most negative code, as nearest rounding never reaches it
    # (u8s8 kernels on AVX2 saturate on it)
    symmetric = zero == (q_max + q_min + 1) // 2
    low = np.where(symmetric, np.maximum(low, -high), low)
    hessian = centred(moments.hessian, moments.mean) if centre else moments.hessian
    groups = hessian.shape[0]
    per_group = outputs // groups
    levels = np.empty(rows.shape, np.int64)
    nearest_error = np.empty(outputs)
    learned_error = np.empty(outputs)
    flips = 0
    if groups == 1 or outputs * hessian[0].size <= BATCHED_HESSIAN_ELEMENTS:
        chunks = [(slice(0, outputs), hessian[0] if groups == 1 else np.repeat(hessian, per_group, axis=0))]
    else:
        chunks = [(slice(g * per_group, (g + 1) * per_group), hessian[g]) for g in range(groups)]
    for rows_of, h in chunks:
        result = learned_levels(rows[rows_of], scale[rows_of], low[rows_of], high[rows_of], h, max_sweeps)
        levels[rows_of] = result.levels
        nearest_error[rows_of], learned_error[rows_of] = result.nearest_error, result.learned_error
        flips += result.flips
    codes = rows_to_weight(node, levels + zero[:, None], values.shape).astype(params.dtype.numpy_dtype)
    detail = {"rounding": "learned", "rounding_mse_nearest": float(nearest_error.mean()),
              "rounding_mse_learned": float(learned_error.mean()), "rounding_changed": flips,
              "rounding_objective": "covariance" if centre else "second_moment"}
    return codes, detail
