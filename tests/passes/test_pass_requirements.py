"""Passes declare the graph properties they require and ensure; run_steps rejects a pipeline-order bug."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from qcompile.config import CompileConfig, Preset
from qcompile.errors import PassError
from qcompile.pass_infra import (GraphPass, GraphProperty, PassContext, PassResult, RepeatUntilStable, Step,
                                 run_steps)
from qcompile.pipeline import build_steps


class _Touch(GraphPass):
    """Reports a modification (invalidating inferred shapes by default) and ensures ``ensures``."""

    def __init__(self, ensures: frozenset[GraphProperty] = frozenset(), modified: bool = True) -> None:
        self.ensures = ensures
        self._modified = modified

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return PassResult(modified=self._modified)


class _NeedsShapes(GraphPass):
    requires = frozenset({GraphProperty.SHAPES_INFERRED})
    invalidates = frozenset()
    ran = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        type(self).ran = True
        return PassResult(modified=False)


def _graph() -> gs.Graph:
    x = gs.Variable("x", dtype=np.float32, shape=[1, 4])
    y = gs.Variable("y", dtype=np.float32, shape=[1, 4])
    return gs.Graph(nodes=[gs.Node("Relu", name="relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y])


def _run(*passes: GraphPass) -> None:
    run_steps(_graph(), [Step("test", tuple(passes))], PassContext(config=CompileConfig(), target=None),
              lambda graph, requests: {})


def test_a_requirement_no_earlier_pass_ensures_is_a_pass_error_naming_the_pass():
    _NeedsShapes.ran = False
    with pytest.raises(PassError, match=r"pass _NeedsShapes \(step test\) requires shapes_inferred"):
        _run(_Touch(), _NeedsShapes())
    assert not _NeedsShapes.ran        # checked before the step runs anything


def test_a_requirement_ensured_earlier_passes():
    _run(_Touch(frozenset({GraphProperty.SHAPES_INFERRED}), modified=False), _NeedsShapes())


def test_a_modifying_pass_invalidates_inferred_shapes():
    with pytest.raises(PassError, match="_NeedsShapes"):
        _run(_Touch(frozenset({GraphProperty.SHAPES_INFERRED}), modified=False), _Touch(), _NeedsShapes())


def test_a_group_requires_what_no_earlier_member_ensures():
    group = RepeatUntilStable([_Touch(frozenset({GraphProperty.SHAPES_INFERRED}), modified=False), _NeedsShapes()])
    assert group.requires == frozenset()
    assert GraphProperty.SHAPES_INFERRED in group.ensures
    assert RepeatUntilStable([_NeedsShapes()]).requires == {GraphProperty.SHAPES_INFERRED}


@pytest.mark.parametrize("preset", [None, Preset.W4A16])
def test_the_pipeline_order_meets_every_requirement(preset):
    config = CompileConfig() if preset is None else CompileConfig(preset=preset)
    held: set[GraphProperty] = set()
    for step in build_steps(config):
        for graph_pass in step.passes:
            assert graph_pass.requires <= held, graph_pass.name
            held = (held - graph_pass.invalidates) | graph_pass.ensures
    assert GraphProperty.QUANTIZED in held
