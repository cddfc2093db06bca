"""The streaming weight-only compile: quantise a skeleton model weight by weight, or segment by segment.

    RTN         for each selected MatMul/Gemm: W ← store, Ŵ = rtn(W), emit, release W          (no data, no session)
    GPTQ / AWQ  for each segment [a, b) (qcompile.streaming.segments), A = activations alive at a:
                  H_x = E[x xᵀ] for the inputs x of the segment's MatMuls, from one run of [a, b) on A (FP32)
                  Ŵ = gptq(W, H_x) / awq(W, H_x, a_x)  for the segment's weights; emit, release W
                  A ← [a, b) run on A with Ŵ in place of W                 (later segments see the quantised model)
    embeddings  E [V, D] → int8 rows + scales (passes/quantize/weight_only_embedding.py's rule)

Memory: the skeleton, the calibration activations at one cut, one segment's weights (in ONNX Runtime and as Ŵ)
and the Hessians of its inputs; the output tensors go to the TensorSink as they are made. Time is linear in the
number of segments. The rules of what is quantised and how are the graph pipeline's (qcompile.streaming.plan).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qcompile.calibrators.hessian import HessianCalibrator, HessianStat
from qcompile.config import CompileConfig, NumberFormat, WeightOnlyAlgorithm, WeightOnlyForm
from qcompile.numerics.weight_only import BlockQuantized, BlockSpec, relative_output_error
from qcompile.pass_infra import NodeDecision, NodeStatus
from qcompile.passes.prepare.upgrade_opset import default_opset, upgrade_default_opset
from qcompile.passes.quantize.quantize_weight_only import quantize_weights
from qcompile.passes.quantize.weight_only_embedding import quantize_rows_int8
from qcompile.runtime_ext.matmul_nbits import CONTRIB_DOMAIN, FormChoice, choose_form, form_for_node
from qcompile.streaming.capture import Activations, SegmentRunner, is_detached, value_types
from qcompile.streaming.emit import BLOCKED_DQ_MIN_OPSET, embedding_nodes, quantized_matmul_nodes
from qcompile.streaming.plan import MatMulTarget, Plan, plan_streaming
from qcompile.streaming.segments import node_reads, split_segments
from qcompile.streaming.sink import TensorSink
from qcompile.streaming.store import WeightStore

logger = logging.getLogger(__name__)


@dataclass
class StreamResult:
    """The quantised model (tensors inline, or external in ``data_path``) and what was decided on the way."""

    model: onnx.ModelProto
    data_path: Path | None
    decisions: dict[str, NodeDecision] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)


def needs_calibration(config: CompileConfig) -> bool:
    """RTN needs no data (its clip search weighs every weight equally); GPTQ and AWQ need input Hessians."""
    return config.weight_only.algorithm is not WeightOnlyAlgorithm.RTN


class _Quantizer:
    """Quantises targets against a store and emits their replacement nodes into a sink."""

    def __init__(self, skeleton: onnx.ModelProto, store: WeightStore, config: CompileConfig, sink: TensorSink,
                 result: StreamResult) -> None:
        self.store, self.config, self.sink, self.result = store, config, sink, result
        self.wo = config.weight_only
        self.choice: FormChoice = choose_form(config.target, self.wo)
        self.replacements: dict[str, list[onnx.NodeProto]] = {}
        self.readers: Counter[str] = Counter()
        self.consumers: dict[str, list[str]] = defaultdict(list)
        for node in skeleton.graph.node:
            for name in node_reads(node):
                self.readers[name] += 1
                self.consumers[name].append(node.op_type)
        self.inline = {t.name: t for t in skeleton.graph.initializer if not is_detached(t)}
        self.producers = {o: n for n in skeleton.graph.node for o in n.output}
        self.consumer_names: dict[str, list[str]] = defaultdict(list)
        for node in skeleton.graph.node:
            for name in node_reads(node):
                self.consumer_names[name].append(node.name)
        self.outputs = {o.name for o in skeleton.graph.output}
        self.folds: dict[tuple[str, int], str] = {}

    def _array(self, name: str) -> np.ndarray:
        if name in self.store:
            return self.store.array(name)
        return onnx.numpy_helper.to_array(self.inline[name])

    def _done_with(self, name: str) -> None:
        self.readers[name] -= 1
        if self.readers[name] <= 0 and name in self.store:
            self.store.release(name)

    def weight(self, target: MatMulTarget) -> np.ndarray:
        w = self._array(target.weight)
        return np.ascontiguousarray(w.T if target.transposed else w, dtype=np.float32)

    def group(self, members: list[MatMulTarget], hessian: HessianStat | None) -> dict[str, np.ndarray]:
        """Quantise and emit the nodes reading one input; returns Ŵ (in the initializer's layout) per weight."""
        bits = members[0].bits
        spec = BlockSpec(bits, self.wo.block_size, self.wo.symmetric,
                         nf4=bits == 4 and self.wo.number_format is NumberFormat.NF4)
        weights = [self.weight(t) for t in members]
        quantized, input_scale, alpha = _quantize_in_column_chunks(weights, spec, self.wo, hessian)
        x = members[0].input
        if input_scale is not None:
            x = self._scaled_input(members, input_scale)
        w_hat: dict[str, np.ndarray] = {}
        for target, w, q in zip(members, weights, quantized):
            detail = self._emit(target, x, q, spec)
            if alpha is not None:
                detail["awq_alpha"] = alpha
            if hessian is not None:       # Ŵ as the float graph sees it: later segments run on it
                effective = q.dequantize() if input_scale is None else q.dequantize() / input_scale[:, None]
                w_hat[target.weight] = np.ascontiguousarray(effective.T if target.transposed else effective,
                                                            dtype=np.float32)
                detail["relative_output_error"] = relative_output_error(w, effective, hessian.hessian)
            self.result.decisions[target.node] = NodeDecision(
                target.node, target.op, NodeStatus.QUANTIZED,
                "weight-only nf4" if spec.nf4 else f"weight-only int{bits}", detail)
            self._done_with(target.weight)
        return w_hat

    def _scaled_input(self, members: list[MatMulTarget], scale: np.ndarray) -> str:
        """AWQ: the group reads x / s: 1/s folded into the constant per-channel parameters of the op producing x
        (LayerNormalization scale and bias, or a Mul's constant) when only the group reads x, else a Mul before
        the group. The fold is applied when the output is assembled (later segments still run the FP32 graph
        with Ŵ/s in place of W, which computes the same)."""
        target, inverse_values = members[0], (1.0 / scale).astype(np.float32)
        producer = self.producers.get(target.input)
        names = {m.node for m in members}
        only_group = set(self.consumer_names.get(target.input, [])) <= names and target.input not in self.outputs
        params = _foldable_params(producer, self.inline, self.store, inverse_values.size) \
            if only_group and producer is not None else []
        if params:
            for index in params:
                old = producer.input[index]
                folded = self.sink.add_array(f"{old}_awq_{producer.name}", (self._array(old) * inverse_values.reshape(
                    self._array(old).shape)).astype(np.float32))
                self.folds[(producer.name, index)] = folded
            self.result.stats[f"awq_folded_{producer.op_type}"] += 1
            return target.input
        name = f"{target.input}_awq_scaled_{target.node}"
        inverse = self.sink.add_array(f"{name}_inv_s", inverse_values)
        self.replacements.setdefault(target.node, []).append(
            onnx.helper.make_node("Mul", [target.input, inverse], [name], name=f"{name}_Mul"))
        self.result.stats["awq_inserted_mul"] += 1
        return name

    def _emit(self, target: MatMulTarget, x: str, q: BlockQuantized, spec: BlockSpec) -> dict:
        choice = form_for_node(self.choice, self.wo, self.consumers.get(target.output, []), None)
        nodes, form = quantized_matmul_nodes(self.sink, target.node, x, target.output, q, choice.form,
                                             choice.accuracy_level, target.bias, self.wo.scale_dtype)
        self.replacements.setdefault(target.node, []).extend(nodes)
        self.result.stats["quantized"] += 1
        self.result.stats[f"form_{form}"] += 1
        self.result.stats[f"bits_{target.bits}"] += 1
        return {"bits": target.bits, "block_size": spec.block_size, "symmetric": spec.symmetric,
                "number_format": "nf4" if spec.nf4 else "integer", "algorithm": self.wo.algorithm.value,
                "form": form, "role": target.role,
                "accuracy_level": choice.accuracy_level if form == "MatMulNBits" else None,
                "form_reason": choice.reason}


#: Column chunk of one weight quantised at a time (elements): RTN and GPTQ treat the N output columns
#: independently, so a vocabulary-wide lm_head need not be widened to float64 all at once.
CHUNK_ELEMENTS = 1 << 22
GPTQ_MIN_CHUNK_COLUMNS = 4096
#: RTN's clip search makes a dozen passes over each chunk: slices that stay in cache ran 1.4x faster (2048×1024)
RTN_CHUNK_ELEMENTS = 1 << 18


def _quantize_in_column_chunks(weights: list[np.ndarray], spec: BlockSpec, config, hessian
                               ) -> tuple[list[BlockQuantized], np.ndarray | None, float | None]:
    """quantize_weights over slices of at most CHUNK_ELEMENTS of each W [K, N] (AWQ searches α over whole
    weights and takes them at once); the codes, scales and zero points are concatenated along N."""
    if config.algorithm is WeightOnlyAlgorithm.AWQ:
        return quantize_weights(weights, spec, config, hessian)
    out = []
    for w in weights:
        step = max(1, (CHUNK_ELEMENTS if config.algorithm is WeightOnlyAlgorithm.GPTQ else RTN_CHUNK_ELEMENTS)
                   // max(w.shape[0], 1))
        if config.algorithm is WeightOnlyAlgorithm.GPTQ:   # each chunk factorises H (O(K³)) again: few, wide ones
            step = max(step, GPTQ_MIN_CHUNK_COLUMNS)
        parts = [quantize_weights([w[:, i:i + step]], spec, config, hessian)[0][0] for i in range(0, w.shape[1], step)]
        out.append(parts[0] if len(parts) == 1 else BlockQuantized(
            np.concatenate([p.codes for p in parts], axis=1), np.concatenate([p.scales for p in parts], axis=1),
            None if parts[0].zero_points is None else np.concatenate([p.zero_points for p in parts], axis=1), spec))
    return out, None, None


def _rows_int8_chunked(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_rows_int8 over row chunks (each row has its own scale, so chunks are exact)."""
    step = max(1, CHUNK_ELEMENTS // max(table.shape[1], 1))
    parts = [quantize_rows_int8(np.asarray(table[i:i + step], dtype=np.float32)) for i in range(0, len(table), step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _foldable_params(producer: onnx.NodeProto, inline: Mapping[str, onnx.TensorProto], store: WeightStore,
                     k: int) -> list[int]:
    """Input indices of ``producer``'s constant per-channel parameters that x / s can be folded into (module
    docstring of passes/quantize/quantize_weight_only.py): LayerNormalization over the last axis (scale, bias),
    or a two-input Mul with one constant; each must hold exactly k values along the last axis."""
    def size_of(name: str) -> tuple[int, ...] | None:
        if name in store:
            return store.meta[name].dims
        return tuple(inline[name].dims) if name in inline else None

    axis = next((a.i for a in producer.attribute if a.name == "axis"), -1)
    if producer.op_type == "LayerNormalization" and axis == -1:
        indices = [i for i in (1, 2) if i < len(producer.input) and producer.input[i]]
    elif producer.op_type == "Mul" and len(producer.input) == 2:
        indices = [i for i in (0, 1) if size_of(producer.input[i]) is not None]
        if len(indices) != 1:
            return []
    else:
        return []
    for index in indices:
        dims = size_of(producer.input[index])
        if dims is None or not dims or dims[-1] != k or int(np.prod(dims)) != k:
            return []
    return indices


def _groups(targets: Iterable[MatMulTarget]) -> list[list[MatMulTarget]]:
    groups: dict[tuple[str, int], list[MatMulTarget]] = {}
    for target in targets:
        groups.setdefault((target.input, target.bits), []).append(target)
    return list(groups.values())


def quantize_streaming(skeleton: onnx.ModelProto, store: WeightStore, config: CompileConfig,
                       calibration: Iterable[Mapping[str, np.ndarray]] | None, data_path: Path | None,
                       location: str | None = None) -> StreamResult:
    """Quantise ``skeleton`` (tensors in ``store``) under a weight-only ``config`` (module docstring)."""
    result = StreamResult(model=skeleton, data_path=data_path)
    clock = _Clock(result)
    if choose_form(config.target, config.weight_only).form is WeightOnlyForm.DEQUANTIZE_LINEAR \
            and default_opset(skeleton) < BLOCKED_DQ_MIN_OPSET:
        current = default_opset(skeleton)
        skeleton = upgrade_default_opset(skeleton, BLOCKED_DQ_MIN_OPSET)
        result.model = skeleton
        result.warnings.append(f"upgraded opset {current} -> {BLOCKED_DQ_MIN_OPSET} for blocked weight-only "
                               "quantisation")
    plan = plan_streaming(skeleton, config)
    clock.stage("plan")
    sink = TensorSink(skeleton.graph, data_path, location)
    try:
        quantizer = _Quantizer(skeleton, store, config, sink, result)
        if needs_calibration(config) and plan.matmuls:
            if calibration is None:
                raise ValueError("GPTQ/AWQ need calibration data")
            _by_segments(skeleton, store, config, plan, quantizer, calibration, result)
        else:
            for members in _groups(plan.matmuls):
                quantizer.group(members, None)
        clock.stage("quantize")
        _embeddings(skeleton, plan, quantizer, result)
        for name, (op, reason) in plan.skipped.items():
            result.decisions.setdefault(name, NodeDecision(name, op, NodeStatus.SKIPPED, reason))
            result.stats["skipped"] += 1
        _finish(skeleton, store, quantizer, sink)
        clock.stage("write")
    finally:
        sink.close()
    return result


def _by_segments(skeleton: onnx.ModelProto, store: WeightStore, config: CompileConfig, plan: Plan,
                 quantizer: _Quantizer, calibration: Iterable[Mapping[str, np.ndarray]], result: StreamResult) -> None:
    targets = {t.node: t for t in plan.matmuls}
    segments = split_segments(skeleton.graph, set(targets))
    runner = SegmentRunner(skeleton, store, value_types(skeleton), config.calibration.provider.ort_providers,
                           config.custom_op_library)
    graph_inputs = {v.name for v in skeleton.graph.input}
    items: list[Activations] = [{k: np.asarray(v) for k, v in item.items()} for item in calibration]
    result.stats["segments"] = len(segments)
    logger.info("%s: %d segments, %d calibration items", config.weight_only.algorithm.value, len(segments), len(items))
    for index, segment in enumerate(segments):
        members = [targets[name] for name in segment.targets]
        inputs = sorted({t.input for t in members})
        calibrators = {name: HessianCalibrator() for name in inputs}
        for outputs in runner.run(segment, items, inputs):
            for name, value in outputs.items():
                calibrators[name].update(value)
        hessians = {name: c.compute() for name, c in calibrators.items()}
        del calibrators
        w_hat: dict[str, np.ndarray] = {}
        for group in _groups(members):
            w_hat.update(quantizer.group(group, hessians[group[0].input]))
        del hessians
        if index + 1 < len(segments):
            carried = [{k: v for k, v in item.items() if k in graph_inputs} for item in items]
            items = [dict(carry, **out) for carry, out in
                     zip(carried, runner.run(segment, items, segment.outputs, weights=w_hat))]
        del w_hat
        logger.debug("segment %d/%d (%d nodes) done", index + 1, len(segments), len(members))


def _embeddings(skeleton: onnx.ModelProto, plan: Plan, quantizer: _Quantizer, result: StreamResult) -> None:
    opset = default_opset(skeleton)
    tables: dict[str, tuple[str, str, int, int]] = {}
    form = "Gather(int8)+DequantizeLinear" if opset >= BLOCKED_DQ_MIN_OPSET else "Gather(int8)+Cast+Mul"
    for target in plan.embeddings:
        if target.table not in tables:
            codes, scale = _rows_int8_chunked(quantizer._array(target.table))
            tables[target.table] = (quantizer.sink.add_array(f"{target.table}_q", codes),
                                    quantizer.sink.add_array(f"{target.table}_scale", scale), *codes.shape)
            del codes, scale
        codes_name, scale_name, rows, width = tables[target.table]
        quantizer.replacements[target.node] = embedding_nodes(quantizer.sink, target.node, codes_name, scale_name,
                                                              target.ids, target.output, width, opset)
        result.decisions[target.node] = NodeDecision(
            target.node, "Gather", NodeStatus.QUANTIZED, "weight-only int8 embedding",
            {"bits": 8, "granularity": "row", "rows": int(rows), "form": form})
        result.stats["embeddings_quantized"] += 1
        quantizer._done_with(target.table)


def _finish(skeleton: onnx.ModelProto, store: WeightStore, quantizer: _Quantizer, sink: TensorSink) -> None:
    """Put the replacement nodes in place, write the float tensors the output still reads, drop the rest."""
    graph = skeleton.graph
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for (producer, index), folded in quantizer.folds.items():
            if producer == node.name:
                node.input[index] = folded
        nodes.extend(quantizer.replacements.get(node.name, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]      # intermediate shapes: ORT recomputes them; the weights' ones changed
    referenced = {name for node in graph.node for name in node_reads(node)} | {o.name for o in graph.output}
    stale = []
    for index, tensor in enumerate(graph.initializer):
        if not is_detached(tensor):
            if tensor.name not in referenced:
                stale.append(index)
            continue
        stale.append(index)
        if tensor.name in referenced:
            meta = store.meta[tensor.name]
            sink.add_raw(tensor.name, meta.data_type, meta.dims, store.raw(tensor.name))
        store.release(tensor.name)
    for index in reversed(stale):
        del graph.initializer[index]
    if any(n.domain == CONTRIB_DOMAIN for n in graph.node) and \
            not any(o.domain == CONTRIB_DOMAIN for o in skeleton.opset_import):
        skeleton.opset_import.add(domain=CONTRIB_DOMAIN, version=1)


class _Clock:
    def __init__(self, result: StreamResult) -> None:
        self.result, self.last = result, time.perf_counter()

    def stage(self, name: str) -> None:
        now = time.perf_counter()
        self.result.stages.append({"name": name, "seconds": round(now - self.last, 3)})
        logger.info("streaming %s: %.1f s", name, now - self.last)
        self.last = now
