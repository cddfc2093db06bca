"""qcompile inspect: what the compiler sees in a model and what it would quantise, without calibration data.

The model goes through the compile's own preparation (qcompile/preparation.py: the target's defaults and the
opset upgrade, so both see the same config and model), then the compile's prepare step (no data: naming,
shape inference, constant and BatchNorm folding) and then through the same selection and Q/DQ planning the
quantize step makes, in the main graph and in every If/Loop/Scan body. Each compute node is reported as
"quantize" or "float" with the reason the plan gives, or "measure" for a final classifier whose precision the
compile measures (qcompile/accuracy/classifier.py). What the plan cannot know without data — a body that
never runs on the calibration data stays float, a classifier's measured precision — is not predicted.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterator

import onnx
import onnx_graphsurgeon as gs

from qcompile.accuracy.classifier import measures_classifier
from qcompile.config import CompileConfig
from qcompile.io import LoadedModel, load_model
from qcompile.pass_infra import PassContext, StatRequest, run_steps
from qcompile.passes.quantize.insert_qdq import plan_quantization
from qcompile.passes.quantize.quantize_recurrent import plan_recurrent
from qcompile.passes.quantize.quantize_subgraphs import graph_scopes
from qcompile.pipeline import build_steps
from qcompile.preparation import prepare_compile
from qcompile.graph.ops import RECURRENT_OPS
from qcompile.selection import CLASSIFIER_KEPT_FLOAT, COMPUTE_OPS, select_nodes

logger = logging.getLogger(__name__)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_nodes(body)


def _no_data(graph: gs.Graph, requests: list[StatRequest]):
    raise AssertionError("the prepare step asked for calibration data")  # prepare is data-free by design


def inspect_model(model: str | bytes | onnx.ModelProto, config: CompileConfig | None = None) -> dict[str, Any]:
    """Op histogram, inputs/outputs and the per-node quantisation plan for ``model`` under ``config``."""
    loaded: LoadedModel = load_model(model)
    proto = loaded.model
    prepared = prepare_compile(proto, config or CompileConfig())    # what compile does first
    config, profile = prepared.config, prepared.profile
    graph = gs.import_onnx(prepared.model)
    prepare = [step for step in build_steps(config) if step.name == "prepare"]
    ctx = PassContext(config=config, target=profile)
    run_steps(graph, prepare, ctx, _no_data)
    nodes: list[dict[str, Any]] = []
    for scope in graph_scopes(graph):
        selections = select_nodes(scope.graph, config, subgraph=scope.owner is not None,
                                  classifier_rule=scope.classifier_rule)
        plan = plan_quantization(scope.graph, selections, profile)
        for node in scope.graph.nodes:
            if node.name in plan.nodes:
                selection = plan.nodes[node.name][1]
                nodes.append({"name": node.name, "op_type": node.op, "plan": "quantize", "scope": scope.owner,
                              "reason": f"{selection.weight.dtype.value} weights, "
                                        f"{(selection.activation.dtype or profile.activation_dtype).value} activations"})
            elif node.op in RECURRENT_OPS:
                form, reason = plan_recurrent(node, selections[node.name], config.target)
                nodes.append({"name": node.name, "op_type": node.op, "plan": "float" if form is None else "quantize",
                              "scope": scope.owner,
                              "reason": reason if form is None else f"int8 W and R per gate row, {form.value}: {reason}"})
            elif node.name in plan.skipped or node.op in COMPUTE_OPS:
                op, reason = plan.skipped.get(node.name, (node.op, selections[node.name].reason))
                if reason == CLASSIFIER_KEPT_FLOAT and measures_classifier(config):
                    nodes.append({"name": node.name, "op_type": op, "plan": "measure", "scope": scope.owner,
                                  "reason": "final classifier: static int8, int8 weights or float, chosen at "
                                            "compile by the measured effect on the outputs"})
                    continue
                nodes.append({"name": node.name, "op_type": op, "plan": "float", "scope": scope.owner,
                              "reason": reason})
    notes = [note for note in (prepared.target_note, prepared.opset_note) if note] + list(ctx.warnings)
    parameters = sum(int(t.values.size) for t in graph.tensors().values() if isinstance(t, gs.Constant))
    return {
        "path": str(loaded.path) if loaded.path else None,
        "bytes": loaded.size_bytes,
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "inputs": [{"name": v.name, "shape": _shape(v)} for v in proto.graph.input
                   if v.name not in {t.name for t in proto.graph.initializer}],
        "outputs": [{"name": v.name, "shape": _shape(v)} for v in proto.graph.output],
        "op_histogram": dict(Counter(n.op_type for n in _all_nodes(proto.graph)).most_common()),
        "prepared_op_histogram": dict(Counter(n.op for n in graph.nodes).most_common()),
        "parameters_after_prepare": parameters,
        "nodes": nodes,
        "would_quantize": sum(1 for n in nodes if n["plan"] == "quantize"),
        "measured_at_compile": sum(1 for n in nodes if n["plan"] == "measure"),
        "config": config.to_json(),
        "notes": notes,
    }


def _shape(value: onnx.ValueInfoProto) -> list[Any] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def format_inspection(result: dict[str, Any]) -> str:
    """The inspection as plain text for the terminal."""
    lines = [f"model {result['path'] or '<in memory>'} ({result['bytes']:,} bytes, opsets "
             + ", ".join(f"{d} {v}" for d, v in result["opsets"].items()) + ")"]
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}: " + ", ".join(f"{v['name']} {v['shape']}" for v in result[kind]))
    lines.append("ops: " + ", ".join(f"{op} {count}" for op, count in result["op_histogram"].items()))
    lines.append("after prepare: " + ", ".join(f"{op} {count}" for op, count in
                                                 result["prepared_op_histogram"].items()))
    nodes = result["nodes"]
    float_nodes = [n for n in nodes if n["plan"] == "float"]
    measured = f", {result['measured_at_compile']} measured at compile" if result.get("measured_at_compile") else ""
    lines.append(f"would quantise {result['would_quantize']} of {len(nodes)} compute node(s){measured}:")
    width = max((len(n["name"]) for n in nodes), default=4)
    for node in nodes:
        where = f" [in {node['scope']}]" if node["scope"] else ""
        lines.append(f"  {node['plan']:<8} {node['op_type']:<14} {node['name']:<{width}}  {node['reason']}{where}")
    if float_nodes:
        reasons = Counter(n["reason"] for n in float_nodes)
        lines.append("float because: " + "; ".join(f"{count}× {reason}" for reason, count in reasons.most_common()))
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)
