"""compile_model's streaming branch for the weight-only presets: bounded memory, only the work the algorithm needs.

    open lazily (external data stays on disk) → detach the tensors (qcompile.streaming.store) → check the
    skeleton (onnx.checker; ONNX Runtime loads it with the weights as typed graph inputs, so no weight is read)
    → quantise (qcompile.streaming.engine: RTN weight by weight with no calibration session; GPTQ/AWQ segment by
    segment) → verify (ORT fusions for the DequantizeLinear form; fidelity vs FP32 while the FP32 model is
    serialisable) → report

What it does not do, and why: no constant folding or shape-subgraph rewriting (weights computed by constant
subgraphs send the model to the graph pipeline, ``streaming_model_reason``), no per-layer analysis (for GPTQ/AWQ
every node's relative output error tr(ΔWᵀHΔW)/tr(WᵀHW) is in the report instead; ``--layer-analysis
sensitivity`` and accuracy budgets run the graph pipeline), no float16 remainder (the CUDA target runs the graph
pipeline).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from qcompile.accuracy.decode import measure_decode
from qcompile.accuracy.fidelity import measure_fidelity
from qcompile.data.kv_cache import detect_kv_cache
from qcompile.config import CompileConfig, LayerAnalysis
from qcompile.errors import QCompileError, UnsupportedModelError
from qcompile.io import EXTERNAL_DATA_THRESHOLD, SERIALISABLE_BYTES, model_size_bytes
from qcompile.io.lazy import LazyModel, open_model_lazily
from qcompile.io.staging import _check_destination, _finish
from qcompile.io.validate import check_model_structure
from qcompile.pass_infra import NodeStatus
from qcompile.report.compile_report import REPORT_VERSION, CompileReport, node_entries
from qcompile.runtime_ext.fusion import check_fusion
from qcompile.runtime_ext.matmul_nbits import choose_form
from qcompile.runtime_ext.session import GraphOptimization, make_session
from qcompile.runtime_ext.target import apply_target_defaults, resolve_profile
from qcompile.streaming.capture import is_detached
from qcompile.streaming.engine import StreamResult, needs_calibration, quantize_streaming
from qcompile.streaming.plan import classic_reason, name_nodes
from qcompile.streaming.store import WeightStore, detach
from qcompile.version import __version__

logger = logging.getLogger(__name__)

DATA_FILE_NAME = "model.onnx.data"


def streaming_config_reason(config: CompileConfig) -> str:
    """Why ``config`` needs the graph pipeline ("" when the streaming path serves it)."""
    profile = resolve_profile(config.target)
    config, _ = apply_target_defaults(config, profile)
    if config.preset.weight_only_bits is None:
        return "not a weight-only preset"
    if profile.float16:
        return f"target {profile.target.value} converts the float remainder to float16 (graph pipeline)"
    if config.accuracy_budget is not None:
        return "an accuracy budget re-emits the model per fallback trial (graph pipeline)"
    if config.analysis.layers is LayerAnalysis.SENSITIVITY:
        return "sensitivity analysis runs the switchable graph (graph pipeline)"
    if config.calibration.workers is not None:
        return "distributed calibration (graph pipeline)"
    return ""


@dataclass
class OpenedModel:
    """A checked skeleton and its detached tensors; ``reference`` is what fidelity compares against."""

    lazy: LazyModel
    skeleton: onnx.ModelProto
    store: WeightStore
    reference: onnx.ModelProto | Path | None
    name: str


def open_for_streaming(model: Any) -> OpenedModel | None:
    """Open and check ``model`` for the streaming path; None when it needs the graph pipeline (logged why)."""
    lazy = open_model_lazily(model)
    name = str(lazy.path) if lazy.path else "<input>"
    reference = lazy.path if lazy.path is not None else (model if isinstance(model, onnx.ModelProto) else None)
    skeleton, store = detach(lazy)
    reason = classic_reason(skeleton)
    if reason:
        logger.info("graph pipeline: %s", reason)
        return None
    name_nodes(skeleton)
    check_skeleton(skeleton, store, name)
    return OpenedModel(lazy, skeleton, store, reference, name)


def check_skeleton(skeleton: onnx.ModelProto, store: WeightStore, name: str) -> None:
    """compile_model's input checks on the skeleton: data flow and onnx.checker, then ONNX Runtime loads the
    graph with every detached weight as a typed graph input (types and shapes of every node, no weight read)."""
    weightless = onnx.ModelProto()
    weightless.CopyFrom(skeleton)
    graph = weightless.graph
    kept = [t for t in graph.initializer if not is_detached(t)]
    detached = [t for t in graph.initializer if is_detached(t)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in detached)
    serialized = check_model_structure(weightless, name, model_size_bytes(weightless))
    try:
        make_session(serialized, optimization=GraphOptimization.DISABLED, log_severity=4)
    except QCompileError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise UnsupportedModelError(f"onnxruntime cannot load the input model {name}: {detail}") from None


@dataclass(frozen=True)
class StreamedCompile:
    model: onnx.ModelProto
    external_data: Path | None      # the data file the model's external tensors are in (a temporary folder)
    report: CompileReport


def compile_opened(opened: OpenedModel, source, config: CompileConfig, started: float,
                   work_dir: Path) -> StreamedCompile:
    """Quantise, verify and report (module docstring); external output data goes to ``work_dir``."""
    profile = resolve_profile(config.target)
    config, target_note = apply_target_defaults(config, profile)
    external = bool(opened.lazy.refs) or opened.lazy.size_bytes > EXTERNAL_DATA_THRESHOLD
    data_path = work_dir / DATA_FILE_NAME if external else None
    calibration = source if needs_calibration(config) else None
    result = quantize_streaming(opened.skeleton, opened.store, config, calibration, data_path)
    model = result.model
    model.producer_name, model.producer_version = "qcompile", __version__
    verify_at = _checked(model, data_path, work_dir)
    quantized = [n for n, d in result.decisions.items() if d.status is NodeStatus.QUANTIZED]
    fusion = None
    form = choose_form(config.target, config.weight_only)
    standard_form = any(d.detail.get("form", "").startswith("DequantizeLinear") for d in result.decisions.values())
    if quantized and standard_form and profile.cpu_fusion_check and data_path is None \
            and config.custom_op_library is None:
        fusion = check_fusion(model, quantized)     # ORT must rewrite DQ -> MatMul into MatMulNBits
    elif quantized:
        _emitted_kernels(result)
    fidelity = _fidelity(opened, verify_at, source, config, result)
    output_bytes = model_size_bytes(model) + (data_path.stat().st_size if data_path else 0)
    report = CompileReport({
        "report_version": REPORT_VERSION,
        "qcompile_version": __version__,
        "input": {"path": str(opened.lazy.path) if opened.lazy.path else None, "bytes": opened.lazy.size_bytes,
                  "sha256": None, "nodes": len(opened.skeleton.graph.node),
                  "calibration": {"source": getattr(source, "description", None),
                                  "samples": getattr(source, "num_samples", None),
                                  "used": calibration is not None}},
        "config": config.to_json(),
        "target": {**profile.describe(), "weight_only_form": form.form.value,
                   "weight_only_accuracy_level": form.accuracy_level, "weight_only_form_reason": form.reason,
                   "note": target_note},
        "pipeline": "streaming",
        "summary": {
            "quantized_nodes": len(quantized),
            "skipped_compute_nodes": sum(1 for d in result.decisions.values() if d.status is NodeStatus.SKIPPED),
            "unfused_nodes": len(fusion.unfused) if fusion else 0,
            "input_bytes": opened.lazy.size_bytes,
            "output_bytes": output_bytes,
            "size_ratio": output_bytes / max(opened.lazy.size_bytes, 1),
            "compile_seconds": time.perf_counter() - started,
        },
        "fidelity": fidelity,
        "nodes": node_entries(result.decisions, dict(fusion.node_kernels) if fusion else {},
                              fusion.unfused if fusion else ()),
        "tensor_ranges": {},
        "ort": fusion.as_json() if fusion else None,
        "passes": [{"step": "streaming", "name": s["name"], "seconds": s["seconds"], "modified": True,
                    "stats": dict(result.stats) if s["name"] == "quantize" else {}} for s in result.stages],
        "warnings": list(result.warnings),
        "layers": None,
        "fallback": None,
    })
    return StreamedCompile(model, data_path, report)


def _emitted_kernels(result: StreamResult) -> None:
    """Without the standard form there is nothing for ORT to fuse: every quantised node is emitted as the kernel
    ORT runs (MatMulNBits / MatMulBnb4, or a Gather on the int8 table), which the report says as such."""
    for name, decision in list(result.decisions.items()):
        if decision.status is NodeStatus.QUANTIZED:
            form = str(decision.detail.get("form", ""))
            kernel = "Gather" if form.startswith("Gather") else form
            result.decisions[name] = dataclasses.replace(decision, detail={**decision.detail, "ort_kernel": kernel,
                                                                            "fused": True})


def _checked(model: onnx.ModelProto, data_path: Path | None, work_dir: Path) -> onnx.ModelProto | Path:
    """onnx.checker on the output; what ORT should load to verify it (the proto, or a file beside its data)."""
    if data_path is None:
        if model_size_bytes(model) <= SERIALISABLE_BYTES:
            try:
                onnx.checker.check_model(model)
            except onnx.checker.ValidationError as exc:
                raise UnsupportedModelError(
                    f"the quantised model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
        return model
    path = work_dir / "model.onnx"
    path.write_bytes(model.SerializeToString())
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise UnsupportedModelError(f"the quantised model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return path


def _fidelity(opened: OpenedModel, quantized, source, config: CompileConfig, result: StreamResult) -> dict:
    """Fidelity vs FP32 on the first calibration items, while an FP32 session is no larger than the input was
    in memory: skipped (with the reason in the report) for models over protobuf's limit."""
    if config.fidelity_samples == 0 or opened.reference is None:
        return {}
    if opened.lazy.size_bytes > SERIALISABLE_BYTES:
        note = (f"fidelity not measured: the FP32 model ({opened.lazy.size_bytes >> 20} MiB) would be loaded whole "
                "by an ONNX Runtime session; compare on a machine with room for it (qcompile compare)")
        result.warnings.append(note)
        return {"skipped": note}
    fidelity = measure_fidelity(opened.reference, quantized, source, config.fidelity_samples,
                                custom_op_library=config.custom_op_library)
    layout = detect_kv_cache(opened.skeleton)
    if layout is not None:   # a decoder: a real greedy decode, not only teacher-forced logits (accuracy/decode.py)
        fidelity = {**fidelity, "decode": measure_decode(opened.reference, quantized, layout, source,
                                                         custom_op_library=config.custom_op_library)}
    return fidelity


def copy_external_model(model: onnx.ModelProto, data_file: Path, staging, dest: Path,
                        protected: tuple[Path, ...]) -> list[Path]:
    """Stage ``model`` at ``dest`` with its external data file copied to ``<stem>.onnx.data`` beside it (the
    references renamed), chunk by chunk; the caller commits the staging."""
    from_save = dest.name[: -len(".onnx")] if dest.name.endswith(".onnx") else dest.stem
    data_dest = dest.with_name(f"{from_save}.onnx.data")
    _check_destination(dest, protected, what="model")
    _check_destination(data_dest, protected, what="external data file")
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    for tensor in renamed.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_dest.name
    with staging.open(data_dest) as out, open(data_file, "rb") as src:
        shutil.copyfileobj(src, out, 16 << 20)
        _finish(out)
    with staging.open(dest) as out:
        out.write(renamed.SerializeToString())
        _finish(out)
    return [dest, data_dest]


def new_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="qcompile-stream-"))


__all__ = ["StreamedCompile", "compile_opened", "copy_external_model", "new_work_dir", "open_for_streaming",
           "streaming_config_reason"]
