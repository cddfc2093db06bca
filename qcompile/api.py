"""compile_model: FP32 ONNX + calibration data -> quantised ONNX + report. The CLI is a thin layer over this."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompile import __version__
from qcompile.calibrators.collector import collect_statistics
from qcompile.config import CompileConfig, Granularity
from qcompile.data import CalibrationSource, InputSpec, open_calibration_source
from qcompile.errors import CalibrationDataError, QCompileError, UnsupportedModelError
from qcompile.io import LoadedModel, load_model, model_size_bytes, save_model, write_text_atomic
from qcompile.pass_infra import NodeStatus, PassContext, run_steps
from qcompile.passes.upgrade_opset import (PER_CHANNEL_MIN_OPSET, QDQ_MIN_OPSET, default_opset,
                                           upgrade_default_opset)
from qcompile.pipeline import build_steps
from qcompile.report import REPORT_VERSION, CompileReport, FidelityAccumulator, node_entries
from qcompile.runtime_ext.fusion import check_fusion
from qcompile.runtime_ext.session import make_session
from qcompile.runtime_ext.target import resolve_profile

logger = logging.getLogger(__name__)

ModelSource = str | Path | bytes | onnx.ModelProto
CalibSource = str | Path | Iterable[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class CompileResult:
    model: onnx.ModelProto
    report: CompileReport

    def save(self, path: str | Path, report_path: str | Path | None = None, *,
             protected: Iterable[Path] = ()) -> tuple[Path, Path]:
        """Write the model and its JSON report atomically; nothing is left behind if either write fails."""
        path = Path(path)
        report_path = Path(report_path) if report_path else default_report_path(path)
        protected = tuple(Path(p) for p in protected) + tuple(_input_paths(self.report))
        written = save_model(self.model, path, protected=protected)
        try:
            write_text_atomic(report_path, self.report.to_json(), protected=protected + tuple(written))
        except BaseException:
            for file in written:
                file.unlink(missing_ok=True)
            raise
        return path, report_path


def _input_paths(report: CompileReport) -> list[Path]:
    path = report.data.get("input", {}).get("path")
    return [Path(path)] if path else []


def default_output_path(model_path: Path) -> Path:
    name = model_path.name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return model_path.with_name(f"{stem}.qdq.onnx")


def default_report_path(output_path: Path) -> Path:
    name = output_path.name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return output_path.with_name(f"{stem}.report.json")


def model_input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {t.name for t in model.graph.initializer}
    return [InputSpec.from_value_info(v) for v in model.graph.input if v.name not in initializers]


def _progress(total: int | None, desc: str, enabled: bool, unit: str):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm
    # disable=None: no bar when stderr is not a terminal (CI logs, pipes), so errors stay one clean line
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)


def compile_model(model: ModelSource, calib: CalibSource, config: CompileConfig | None = None, *,
                  progress: bool = False) -> CompileResult:
    """Quantise ``model`` with ranges calibrated on ``calib`` (a folder or an iterable of feed dicts)."""
    config = config or CompileConfig()
    started = time.perf_counter()
    loaded = load_model(model)
    specs = model_input_specs(loaded.model)
    with contextlib.ExitStack() as stack:
        if _is_one_shot(calib):
            calib = _spool_to_folder(calib, specs, config.calibration.num_samples,
                                     Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qcompile-calib-"))))
        source = open_calibration_source(calib, specs, num_samples=config.calibration.num_samples,
                                         image=config.calibration.image)
        return _compile(loaded, source, config, progress, started)


def _is_one_shot(calib: object) -> bool:
    return not isinstance(calib, (str, Path, bytes)) and hasattr(calib, "__next__") and iter(calib) is calib


def _spool_to_folder(items, specs: list[InputSpec], cap: int | None, folder: Path) -> Path:
    """A one-shot iterator is written item by item to .npz files, so it can be read several times
    (ranges, then fidelity) with memory that does not grow with the number of items."""
    for index, item in enumerate(items):
        if cap is not None and index >= cap:
            break
        if not isinstance(item, Mapping):
            if len(specs) != 1:
                raise CalibrationDataError(f"calibration item {index} is a {type(item).__name__}, not a dict of "
                                           "input name -> array")
            item = {specs[0].name: item}
        arrays = {str(k): np.asarray(v) for k, v in item.items()}
        if any(a.dtype == object for a in arrays.values()):
            raise CalibrationDataError(f"calibration item {index} holds non-numeric (object) arrays")
        np.savez(folder / f"item_{index:08d}.npz", **arrays)
    return folder


def _compile(loaded: LoadedModel, source: CalibrationSource, config: CompileConfig, progress: bool,
             started: float) -> CompileResult:
    profile = resolve_profile(config.target)
    working, config, opset_note = _prepare_opset(loaded.model, config)
    graph = gs.import_onnx(working)
    ctx = PassContext(config=config, target=profile)
    if opset_note:
        ctx.warnings.append(opset_note)

    steps = build_steps(config)
    with _progress(len(steps), "compile", progress, "step") as bar:
        def collect(g: gs.Graph, requests):
            with _progress(source.num_samples, "calibrate", progress, "sample") as calib_bar:
                return collect_statistics(g, requests, source, progress=calib_bar,
                                          memory_budget_bytes=config.calibration.memory_budget_mb << 20)

        records = run_steps(graph, steps, ctx, collect, on_step=(lambda _s: bar.update(1)) if bar else None)

    quantized = _export(graph, working)
    quantized_names = [n for n, d in ctx.decisions.items() if d.status is NodeStatus.QUANTIZED]
    if not quantized_names:
        skipped = [d for d in ctx.decisions.values() if d.status is NodeStatus.SKIPPED]
        message = ("no node was quantised: " + (f"{len(skipped)} compute node(s) skipped, see nodes[].reason"
                   if skipped else "the graph has no Conv/ConvTranspose/MatMul/Gemm with a constant weight"))
        logger.warning(message)
        ctx.warnings.append(message)
    fusion = check_fusion(quantized, quantized_names) if quantized_names else None
    if fusion is not None and fusion.unfused:
        message = f"{len(fusion.unfused)} quantised node(s) stayed float in ORT: {list(fusion.unfused)[:5]}"
        logger.warning(message)
        ctx.warnings.append(message)
    fidelity = measure_fidelity(loaded.model, quantized, source, config.fidelity_samples)
    output_bytes = model_size_bytes(quantized)

    report = CompileReport({
        "report_version": REPORT_VERSION,
        "qcompile_version": __version__,
        "input": _describe_input(loaded, source),
        "config": config.to_json(),
        "target": profile.describe(),
        "summary": {
            "quantized_nodes": len(quantized_names),
            "skipped_compute_nodes": sum(1 for d in ctx.decisions.values() if d.status is NodeStatus.SKIPPED),
            "unfused_nodes": len(fusion.unfused) if fusion else 0,
            "input_bytes": loaded.size_bytes,
            "output_bytes": output_bytes,
            "size_ratio": output_bytes / max(loaded.size_bytes, 1),
            "compile_seconds": time.perf_counter() - started,
        },
        "fidelity": fidelity,
        "nodes": node_entries(ctx.decisions, dict(fusion.node_kernels) if fusion else {},
                              fusion.unfused if fusion else ()),
        "tensor_ranges": ctx.tensor_ranges,
        "ort": fusion.as_json() if fusion else None,
        "passes": [{"step": r.step, "name": r.name, "seconds": round(r.seconds, 4), "modified": r.modified,
                    "stats": dict(r.stats)} for r in records],
        "warnings": list(ctx.warnings),
    })
    return CompileResult(model=quantized, report=report)


def _prepare_opset(model: onnx.ModelProto, config: CompileConfig) -> tuple[onnx.ModelProto, CompileConfig, str]:
    """Upgrade to the opset per-channel weights need, or fall back to per-tensor weights if that fails."""
    opset = default_opset(model)
    if opset < QDQ_MIN_OPSET:
        try:
            return upgrade_default_opset(model, PER_CHANNEL_MIN_OPSET), config, \
                f"upgraded opset {opset} -> {PER_CHANNEL_MIN_OPSET}"
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"opset {opset} has no QuantizeLinear and {exc}") from None
    if opset < PER_CHANNEL_MIN_OPSET and config.weight.granularity is Granularity.CHANNEL:
        try:
            return upgrade_default_opset(model, PER_CHANNEL_MIN_OPSET), config, \
                f"upgraded opset {opset} -> {PER_CHANNEL_MIN_OPSET} for per-channel weights"
        except UnsupportedModelError as exc:
            note = f"{exc}; using per-tensor weights instead"
            logger.warning(note)
            return model, dataclasses.replace(config, weight=dataclasses.replace(
                config.weight, granularity=Granularity.TENSOR)), note
    return model, config, ""


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    # intermediate shapes are an annotation ORT recomputes; they cost bytes on small models
    del model.graph.value_info[:]
    model.ir_version = original.ir_version
    model.producer_name = "qcompile"
    model.producer_version = __version__
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    if model.ByteSize() < (2 << 30) - (64 << 20):
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise UnsupportedModelError(f"the quantised model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return model


def _describe_input(loaded: LoadedModel, source: CalibrationSource) -> dict[str, Any]:
    model = loaded.model
    digest = hashlib.sha256(model.SerializeToString()).hexdigest() if model.ByteSize() < (2 << 30) - 1 else None
    return {
        "path": str(loaded.path) if loaded.path else None,
        "bytes": loaded.size_bytes,
        "sha256": digest,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "nodes": len(model.graph.node),
        "inputs": [{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape) if s.shape is not None else None}
                   for s in model_input_specs(model)],
        "calibration": {"source": source.description, "samples": source.num_samples},
    }


def measure_fidelity(reference: onnx.ModelProto, quantized: onnx.ModelProto, source: Iterable,
                     max_samples: int) -> dict[str, Any]:
    """Run FP32 and quantised models on the first ``max_samples`` calibration items and compare outputs."""
    if max_samples == 0:
        return {}
    try:
        ref_session = make_session(reference)
        q_session = make_session(quantized)
    except QCompileError as exc:
        logger.warning("fidelity not measured: %s", exc)
        return {"error": str(exc)}
    names = [o.name for o in ref_session.get_outputs()]
    acc = FidelityAccumulator()
    count = 0
    for feed in source:
        ref_out = ref_session.run(names, dict(feed))
        q_out = q_session.run(names, dict(feed))
        for name, r, q in zip(names, ref_out, q_out):
            acc.add(name, np.asarray(r), np.asarray(q))
        count += 1
        if count >= max_samples:
            break
    return {"items": count, "outputs": acc.summary()}
