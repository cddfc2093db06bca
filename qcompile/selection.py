"""Which nodes get which QuantSpec: op types, exclusions (names or regexes), overrides, the classifier rule.

A node n of type t is a candidate iff t ∈ config.op_types, no exclude pattern matches n.name (exact name or
full regex match), and no override with skip=True matches it. The final classifier — a compute node whose
output reaches a graph output through only bias adds and data-movement ops — stays float unless
quantize_classifier is set, because its errors land directly on the logits. Every exclude/override pattern
must match at least one node: a selector that matches nothing is almost always a typo, so it is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompile.config import CompileConfig, NodeOverride, QuantSpec
from qcompile.errors import SelectionError
from qcompile.graph.ops import COMPUTE_OPS, DATA_MOVEMENT_OPS
from qcompile.graph.scopes import all_nodes


# the selection rule's reason for a final classifier (accuracy/classifier.py then measures its precision)
CLASSIFIER_KEPT_FLOAT = "final classifier kept float (set quantize_classifier to quantise it)"


@dataclass(frozen=True)
class NodeSelection:
    """The decision for one node: quantise with these specs, or not, and why."""

    selected: bool
    reason: str
    activation: QuantSpec | None = None
    weight: QuantSpec | None = None


def matches_node(pattern: str, name: str) -> bool:
    """A selector matches a node name: the exact name, or a regex matching all of it."""
    return pattern == name or re.fullmatch(pattern, name) is not None


def _is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant)


def classifier_nodes(graph: gs.Graph) -> set[str]:
    """Compute nodes whose output reaches a graph output through bias adds and data-movement ops only."""
    outputs = {t.name for t in graph.outputs}
    return {node.name for node in graph.nodes
            if node.op in COMPUTE_OPS and node.outputs and reaches_output(node.outputs[0], outputs)}


def reaches_output(tensor: gs.Tensor, outputs: set[str]) -> bool:
    """Does ``tensor`` become one of ``outputs`` through bias adds and data-movement ops only?"""
    for _ in range(16):
        if tensor.name in outputs:
            return True
        if len(tensor.outputs) != 1:
            return False
        nxt = tensor.outputs[0]
        is_bias_add = nxt.op in ("Add", "Sub") and any(_is_constant(t) for t in nxt.inputs)
        if not (is_bias_add or nxt.op in DATA_MOVEMENT_OPS) or not nxt.outputs:
            return False
        tensor = nxt.outputs[0]
    return False


def all_node_names(graph: gs.Graph) -> list[str]:
    """Names of the nodes of ``graph`` and of every (nested) If/Loop/Scan body."""
    return [n.name for n in all_nodes(graph)]


def select_nodes(graph: gs.Graph, config: CompileConfig, *, subgraph: bool = False,
                 classifier_rule: bool = True) -> dict[str, NodeSelection]:
    """Decide for every node of ``graph`` (its own nodes, not those of its bodies).

    For the main graph, selectors that match no node of the model (bodies included) raise SelectionError;
    a body (``subgraph=True``) skips that check, which the main graph already made. ``classifier_rule=False``
    drops the final-classifier rule (inside a Loop body no node computes the model's logits).
    """
    if subgraph:
        classifiers = classifier_nodes(graph) if classifier_rule and not config.quantize_classifier else set()
        return {node.name: _decide(node, config, classifiers) for node in graph.nodes}
    names = all_node_names(graph)
    for pattern in config.exclude:
        if not any(matches_node(pattern, name) for name in names):
            raise SelectionError(f"--exclude {pattern!r} matches no node (node names look like {names[:3]})")
    for override in config.overrides:
        if not any(matches_node(override.pattern, name) for name in names):
            raise SelectionError(f"override pattern {override.pattern!r} matches no node")
    classifiers = set() if config.quantize_classifier or not classifier_rule else classifier_nodes(graph)
    decisions: dict[str, NodeSelection] = {}
    for node in graph.nodes:
        decisions[node.name] = _decide(node, config, classifiers)
    return decisions


def _override_for(name: str, overrides: tuple[NodeOverride, ...]) -> NodeOverride | None:
    for override in overrides:
        if matches_node(override.pattern, name):
            return override
    return None


def _decide(node: gs.Node, config: CompileConfig, classifiers: set[str]) -> NodeSelection:
    override = _override_for(node.name, config.overrides)
    if override is not None and override.skip:
        return NodeSelection(False, "excluded by an override")
    if any(matches_node(p, node.name) for p in config.exclude):
        return NodeSelection(False, "excluded by --exclude")
    if node.op not in config.op_types:
        if node.op in COMPUTE_OPS:
            return NodeSelection(False, f"op type {node.op} not in op_types")
        return NodeSelection(False, "not a compute op (carried through or left float)")
    if node.name in classifiers and override is None:
        return NodeSelection(False, CLASSIFIER_KEPT_FLOAT)
    activation = override.activation if override and override.activation else config.activation
    weight = override.weight if override and override.weight else config.weight
    return NodeSelection(True, "selected", activation, weight)
