"""The one place where pass order is decided.

    prepare   : name nodes → repeat until stable [infer shapes → fold constants (Constant nodes, shape
                subgraphs) → fold BatchNorm → fold Pad into Conv → MatMul+bias on matrices as Gemm] → cross-layer
                equalisation (when configured) → If/Loop bodies get local copies of
                outer-scope activations → infer shapes                                     (no data)
    transform : SmoothQuant (per-channel scales moved from activations into weights)     (channel stats)
                → outlier-channel splitting (off by default)                              (channel stats)
    quantize  : select nodes, insert Q/DQ in the main graph and every If/Loop/Scan body (activation ranges)
                → int8 W/R of LSTM/GRU/RNN in every graph (no data)
    lower     : keep float Conv/Gemm float in ORT (a Max between a DQ and them), a Relu/Clip before an FP8 Q as
                Max/Min (ORT would drop or fail on it), remove what the rewrite left unused, float remainder to
                float16 where the target profile asks (CUDA)                              (no data)

Each pass states the graph properties it requires and ensures (pass_infra.GraphProperty); run_steps rejects
an order here in which a pass would run before what it requires was ensured.
"""

from __future__ import annotations

from qcompile.config import CompileConfig
from qcompile.pass_infra import GraphPass, RepeatUntilStable, Step
from qcompile.passes.lower.cleanup import CleanupPass
from qcompile.passes.lower.convert_float16 import ConvertFloat16Pass
from qcompile.passes.prepare.fold_batchnorm import FoldBatchNormPass
from qcompile.passes.prepare.fold_constants import FoldConstantsPass
from qcompile.passes.prepare.fuse_pad_into_conv import FusePadIntoConvPass
from qcompile.passes.prepare.infer_shapes import InferShapesPass
from qcompile.passes.lower.keep_float import KeepFloatPass
from qcompile.passes.lower.activation_before_float_q import ActivationBeforeFloatQuantizePass
from qcompile.passes.prepare.matmul_add_to_gemm import MatMulAddToGemmPass
from qcompile.passes.prepare.localize_outer_scope import LocalizeOuterScopeInputsPass
from qcompile.passes.prepare.name_nodes import NameNodesPass
from qcompile.passes.quantize.quantize_subgraphs import QuantizeAllGraphsPass
from qcompile.passes.quantize.quantize_weight_only import WeightOnlyQuantizePass
from qcompile.passes.quantize.weight_only_embedding import WeightOnlyEmbeddingPass
from qcompile.passes.quantize.quantize_gather import QuantizeGatherPass
from qcompile.passes.quantize.quantize_recurrent import QuantizeRecurrentPass
from qcompile.passes.transform.cross_layer_equalization import CrossLayerEqualizationPass
from qcompile.passes.transform.smooth_quant import SmoothQuantPass
from qcompile.passes.transform.split_outlier_channels import SplitOutlierChannelsPass


def weight_only_passes(config: CompileConfig) -> tuple[GraphPass, ...]:
    """The quantize step of the weight-only presets (w4a16, w8a16): no activation quantisation (recurrent
    layers: int8 W/R, as in the static pipeline)."""
    return (WeightOnlyQuantizePass(), QuantizeRecurrentPass(), WeightOnlyEmbeddingPass())


def build_steps(config: CompileConfig) -> list[Step]:
    weight_only = config.preset.weight_only_bits is not None
    # MatMul+bias -> Gemm serves static INT8 (QGemm); weight-only keeps MatMul, which ORT fuses to MatMulNBits
    folds = (InferShapesPass(), FoldConstantsPass(), FoldBatchNormPass(), FusePadIntoConvPass()) + (
        () if weight_only else (MatMulAddToGemmPass(),))
    steps = [
        Step("prepare", (NameNodesPass(), RepeatUntilStable(folds), CrossLayerEqualizationPass(),
                         LocalizeOuterScopeInputsPass(), InferShapesPass())),
        Step("transform", (SmoothQuantPass(),)),
        Step("transform", (SplitOutlierChannelsPass(),)),   # its own step: statistics after smoothing
        Step("quantize", (QuantizeAllGraphsPass(), QuantizeRecurrentPass(), QuantizeGatherPass())),
        Step("lower", (KeepFloatPass(), ActivationBeforeFloatQuantizePass(), CleanupPass(),
                       ConvertFloat16Pass())),   # float16: only if the target asks
    ]
    if weight_only:
        steps = [step for step in steps if step.name not in ("transform", "quantize")]
        steps.insert(1, Step("quantize", weight_only_passes(config)))
    return steps
