"""ORT contrib lowering for weight-only MatMuls, and which INT4 form a target gets.

    y = x·W,  W ≈ Ŵ (blocked along K)  ->  y = MatMulNBits(x, B, scales[, zero_points][, bias])   (com.microsoft)
                                        ->  y = MatMulBnb4(x, B_nf4, absmax)                      (NF4)

Layouts are those of qcompile.numerics.packing. Symmetric codes q ∈ [-2^(b-1), 2^(b-1)) are stored as q + 2^(b-1) with
no zero-point input (the op's default zero point is 2^(b-1)).

Form choice on the CPU EP (ORT 1.32, this project's x86 machine; benchmarks/int4_decode.py): MatMulNBits at
accuracy_level 4 (int8 compute) is the kernel ORT runs for INT4 weights, and ORT rewrites a blocked
DequantizeLinear -> MatMul into the same op; levels 0/1 (fp32 compute) were about 4x slower than level 4. The
CPU target now emits MatMulNBits at level 4 directly (``auto``): no opset-21 upgrade of the model, nothing left
to a load-time fusion that some consumers block (a Relu after the MatMul; an Add after a 2-D one), and the
report states the kernel rather than hoping for it. ``--form dequantize_linear`` keeps the portable ONNX form
(with the per-node exceptions of ``form_for_node`` for targets that pick it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.config import ScaleDType, Target, WeightOnlyConfig, WeightOnlyForm
from qcompile.numerics.packing import matmul_nbits_weight, matmul_nbits_zero_points, pack_4bit_high_first
from qcompile.numerics.weight_only import BlockQuantized

CONTRIB_DOMAIN = "com.microsoft"
DEFAULT_CPU_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class FormChoice:
    form: WeightOnlyForm
    accuracy_level: int | None
    reason: str


def choose_form(target: Target, config: WeightOnlyConfig) -> FormChoice:
    """The emitted form for ``target`` (see the module docstring for the measurements behind it)."""
    if config.form is WeightOnlyForm.DEQUANTIZE_LINEAR:
        return FormChoice(config.form, None, "asked for")
    if config.form is WeightOnlyForm.MATMUL_NBITS:
        level = DEFAULT_CPU_ACCURACY_LEVEL if config.accuracy_level is None else config.accuracy_level
        return FormChoice(config.form, level, "asked for")
    if config.accuracy_level is not None:
        return FormChoice(WeightOnlyForm.MATMUL_NBITS, config.accuracy_level,
                          "an accuracy_level was asked for: only MatMulNBits carries one")
    return FormChoice(WeightOnlyForm.MATMUL_NBITS, DEFAULT_CPU_ACCURACY_LEVEL,
                      "MatMulNBits is the kernel ORT runs for INT4 weights; emitted directly it needs no opset-21 "
                      "upgrade and no fusion at load (--form dequantize_linear for the portable ONNX form)")


# Where ORT 1.32 leaves a blocked DQ -> MatMul unfused (measured): a Relu after the MatMul (DequantizeLinear +
# float MatMul stayed; Sigmoid or Identity did not block), and, with a 2-D activation, an Add of another tensor
# after it (MatMulAddFusion makes a float Gemm first). The contrib op is emitted there instead.
_DQ_FUSION_BLOCKERS = frozenset({"Relu"})
_DQ_FUSION_BLOCKERS_2D = frozenset({"Add"})


def form_for_node(choice: FormChoice, config: WeightOnlyConfig, consumer_ops: list[str],
                  activation_rank: int | None) -> FormChoice:
    """The form for one node: the target's choice, except where ORT would not fuse the standard form."""
    if config.form is not WeightOnlyForm.AUTO or choice.form is not WeightOnlyForm.DEQUANTIZE_LINEAR:
        return choice
    blockers = _DQ_FUSION_BLOCKERS | (_DQ_FUSION_BLOCKERS_2D if activation_rank in (2, None) else frozenset())
    found = blockers & set(consumer_ops)
    if found:
        return FormChoice(WeightOnlyForm.MATMUL_NBITS, DEFAULT_CPU_ACCURACY_LEVEL,
                          f"ORT does not fuse blocked DQ->MatMul followed by {'/'.join(sorted(found))} here")
    return choice


def scale_input(name: str, scales: np.ndarray, scale_dtype: ScaleDType, nodes: list[gs.Node]) -> gs.Tensor:
    """float32 scales as a constant, or stored as float16 and Cast to float32 (ORT folds the Cast at load)."""
    if scale_dtype is ScaleDType.FLOAT32:
        return gs.Constant(name, np.ascontiguousarray(scales, dtype=np.float32))
    stored = gs.Constant(f"{name}_fp16", np.ascontiguousarray(scales, dtype=np.float16))
    out = gs.Variable(name, dtype=np.float32, shape=list(scales.shape))
    nodes.append(gs.Node("Cast", name=f"{name}_Cast", attrs={"to": 1}, inputs=[stored], outputs=[out]))
    return out


def fp16_safe_scales(scales: np.ndarray, scale_dtype: ScaleDType) -> np.ndarray:
    """Scales rounded as they will be stored (so codes are computed against what the runtime multiplies)."""
    if scale_dtype is ScaleDType.FLOAT16:
        tiny = float(np.finfo(np.float16).tiny)
        return np.clip(scales, tiny, float(np.finfo(np.float16).max)).astype(np.float16).astype(np.float32)
    return scales.astype(np.float32)


def matmul_nbits_nodes(name: str, x: gs.Tensor, y: gs.Variable, quantized: BlockQuantized,
                       accuracy_level: int, bias: gs.Constant | None, scale_dtype: ScaleDType) -> list[gs.Node]:
    """MatMulNBits computing y = x·Ŵ (+ bias) for Ŵ = ``quantized`` (W [K, N])."""
    spec = quantized.spec
    k, n = quantized.codes.shape
    codes = quantized.codes.astype(np.int16)
    if quantized.zero_points is None:
        codes = codes + (1 << (spec.bits - 1))
    nodes: list[gs.Node] = []
    inputs = [x, gs.Constant(f"{name}_B", matmul_nbits_weight(codes.astype(np.uint8), spec.block_size, spec.bits)),
              scale_input(f"{name}_scales", np.ascontiguousarray(quantized.scales.T), scale_dtype, nodes)]
    if quantized.zero_points is not None:
        inputs.append(gs.Constant(f"{name}_zero_points", matmul_nbits_zero_points(quantized.zero_points, spec.bits)))
    if bias is not None:
        inputs += [gs.Variable.empty()] * (5 - len(inputs)) + [bias]
    nodes.append(gs.Node("MatMulNBits", name=name, domain=CONTRIB_DOMAIN, inputs=inputs, outputs=[y],
                         attrs={"K": k, "N": n, "bits": spec.bits, "block_size": spec.block_size,
                                "accuracy_level": int(accuracy_level)}))
    return nodes


def matmul_bnb4_nodes(name: str, x: gs.Tensor, y: gs.Variable, quantized: BlockQuantized) -> list[gs.Node]:
    """MatMulBnb4 (quant_type 1 = NF4) for blocks along K; needs K a multiple of the block size, so that
    the op's blocks over Wᵀ flattened are exactly the per-column blocks."""
    spec = quantized.spec
    k, n = quantized.codes.shape
    if k % spec.block_size:
        raise ValueError(f"MatMulBnb4 needs K ({k}) to be a multiple of block_size ({spec.block_size})")
    packed = pack_4bit_high_first(np.ascontiguousarray(quantized.codes.T))
    absmax = np.ascontiguousarray(quantized.scales.T, dtype=np.float32).reshape(-1)
    return [gs.Node("MatMulBnb4", name=name, domain=CONTRIB_DOMAIN,
                    inputs=[x, gs.Constant(f"{name}_B", packed), gs.Constant(f"{name}_absmax", absmax)],
                    outputs=[y], attrs={"K": k, "N": n, "block_size": spec.block_size, "quant_type": 1})]
