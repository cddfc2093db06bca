"""Pass infrastructure: passes, the context they share, statistics requests, and the step runner.

A pipeline is a list of steps; a step is a list of passes. Before a step runs, the union of its passes'
``stat_requests`` is gathered in ONE streaming pass over the calibration data on the graph as it stands at
that step. Statistics are cached in the context and dropped when a pass reports ``modified=True`` (a coarse
version of LLVM's analysis manager: any change invalidates every analysis).

Each pass declares the graph properties it ``requires`` and those it ``ensures`` (as onnx_ir's passes state
their pre- and postconditions). ``run_steps`` keeps the set P of properties that hold: before a pass p it
checks requires(p) ⊆ P, else the pipeline order is wrong and a PassError names p; after it,

    P ← (P − invalidates(p)) ∪ ensures(p)   if p modified the graph,   P ← P ∪ ensures(p)   otherwise.
"""

from __future__ import annotations

import abc
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import onnx_graphsurgeon as gs

from qcompile.config import CalibrationMethod, CompileConfig, TargetProfile
from qcompile.errors import PassError, QCompileError
from qcompile.numerics.patches import PatchGeometry
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)


class GraphProperty(enum.Enum):
    """A fact about the graph that a pass ensures and later passes may rely on."""

    NAMED_NODES = "named_nodes"                # every node (bodies included) has a unique name
    SHAPES_INFERRED = "shapes_inferred"        # tensors carry the element types and shapes ONNX can infer
    CONSTANTS_FOLDED = "constants_folded"      # nodes of constant inputs evaluated (Constant nodes are initializers)
    BODY_INPUTS_LOCAL = "body_inputs_local"    # body compute nodes read body-owned activations
    QUANTIZED = "quantized"                    # the quantize step has rewritten the selected nodes


class StatKind(enum.Enum):
    RANGE = "range"                  # per-tensor min/max-like range from a Calibrator
    CHANNEL_ABSMAX = "channel_absmax"  # per-channel max |x| along an axis
    CHANNEL_MEAN = "channel_mean"      # per-channel mean along an axis (bias correction)
    ROW_SAMPLE = "row_sample"          # per-channel min/max + a bounded uniform sample of rows (SmoothQuant α search)
    HESSIAN = "hessian"                # mean x xᵀ over rows of the last axis (GPTQ/AWQ); value: HessianStat
    PATCH_MOMENTS = "patch_moments"    # mean P Pᵀ and mean P of Conv patches / MatMul rows; value: PatchMoments


@dataclass(frozen=True)
class StatRequest:
    tensor: str
    kind: StatKind = StatKind.RANGE
    method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.999
    symmetric: bool = False
    unsigned: bool = True
    num_bits: int = 8                  # RANGE: the integer grid the range is for (entropy/MSE searches)
    axis: int | None = None
    sample_rows: int = 0               # ROW_SAMPLE: how many rows to keep; PATCH_MOMENTS: rows per batch
    patch: PatchGeometry | None = None  # PATCH_MOMENTS: the Conv's geometry (None: MatMul/Gemm rows)


class NodeStatus(enum.Enum):
    QUANTIZED = "quantized"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class NodeDecision:
    """What happened to one node, for the report: quantised (how) or skipped (why)."""

    name: str
    op_type: str
    status: NodeStatus
    reason: str = ""
    detail: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PassResult:
    modified: bool
    stats: Mapping[str, int] = field(default_factory=dict)


@dataclass
class PassContext:
    """What passes share: the configuration, the target profile, statistics and what they decided."""

    config: CompileConfig
    target: TargetProfile                           # built by runtime_ext/target.py
    statistics: dict[StatRequest, TensorRange] = field(default_factory=dict)
    decisions: dict[str, NodeDecision] = field(default_factory=dict)
    tensor_ranges: dict[str, dict] = field(default_factory=dict)   # quantised tensor -> range/scale for report
    warnings: list[str] = field(default_factory=list)

    def decide(self, decision: NodeDecision) -> None:
        """Record a node's status; details of earlier passes (e.g. SmoothQuant's α) are kept under the new ones."""
        previous = self.decisions.get(decision.name)
        if previous is not None and previous.detail:
            decision = NodeDecision(decision.name, decision.op_type, decision.status, decision.reason,
                                    {**previous.detail, **decision.detail})
        self.decisions[decision.name] = decision

    def range_of(self, request: StatRequest) -> TensorRange:
        try:
            return self.statistics[request]
        except KeyError:
            raise PassError(f"statistics for tensor {request.tensor!r} were not collected") from None


@dataclass(frozen=True)
class PassRecord:
    """One executed pass, for the report's timeline."""

    step: str
    name: str
    seconds: float
    modified: bool
    stats: Mapping[str, int]


class GraphPass(abc.ABC):
    """A graph transformation. ``run`` mutates the graph in place; ``__call__`` adds timing and error tagging.

    ``requires``: properties that must hold before the pass runs; ``ensures``: properties that hold after it;
    ``invalidates``: properties a run that modifies the graph no longer guarantees (by default the inferred
    shapes: new tensors may lack them). See the module docstring for how run_steps uses them.
    """

    requires: frozenset[GraphProperty] = frozenset()
    ensures: frozenset[GraphProperty] = frozenset()
    invalidates: frozenset[GraphProperty] = frozenset({GraphProperty.SHAPES_INFERRED})

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult: ...

    def __call__(self, graph: gs.Graph, ctx: PassContext) -> tuple[PassResult, float]:
        start = time.perf_counter()
        try:
            result = self.run(graph, ctx)
        except QCompileError:
            raise
        except Exception as exc:  # a bug or an unexpected graph: name the pass, keep one line
            logger.debug("pass %s failed", self.name, exc_info=True)
            raise PassError(f"pass {self.name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        seconds = time.perf_counter() - start
        logger.info("%s: %s in %.2fs", self.name, dict(result.stats) or "no change", seconds)
        return result, seconds


class RepeatUntilStable(GraphPass):
    """Run a group of passes again while any of them changes the graph (at most ``max_rounds`` times).

    Folding exposes more folding: a Pad whose amounts come from the shape of a tensor that is only known
    once an earlier Pad was folded needs a second round.
    """

    def __init__(self, passes: Sequence[GraphPass], max_rounds: int = 4) -> None:
        self.passes = tuple(passes)
        self.max_rounds = max_rounds
        # the group needs what a member needs and no earlier member ensures; it ensures what any member does
        self.requires, self.ensures, self.invalidates = _group_properties(self.passes)

    @property
    def name(self) -> str:
        return "RepeatUntilStable(" + ", ".join(p.name for p in self.passes) + ")"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        totals: dict[str, int] = {}
        modified_any = False
        rounds = 0
        for rounds in range(1, self.max_rounds + 1):
            modified = False
            for graph_pass in self.passes:
                result, _ = graph_pass(graph, ctx)
                modified |= result.modified
                for key, value in result.stats.items():
                    totals[f"{graph_pass.name}.{key}"] = totals.get(f"{graph_pass.name}.{key}", 0) + value
            modified_any |= modified
            if not modified:
                break
        totals["rounds"] = rounds
        return PassResult(modified=modified_any, stats=totals)


def _group_properties(passes: Sequence[GraphPass]
                      ) -> tuple[frozenset[GraphProperty], frozenset[GraphProperty], frozenset[GraphProperty]]:
    """(requires, ensures, invalidates) of a sequence of passes run as one."""
    requires: set[GraphProperty] = set()
    held: set[GraphProperty] = set()
    invalidated: set[GraphProperty] = set()
    for graph_pass in passes:
        requires |= graph_pass.requires - held
        held = (held - graph_pass.invalidates) | graph_pass.ensures
        invalidated = (invalidated | graph_pass.invalidates) - graph_pass.ensures
    return frozenset(requires), frozenset(held), frozenset(invalidated)


def check_requirements(graph_pass: GraphPass, held: set[GraphProperty], step: str) -> None:
    """PassError naming the pass when a property it requires was not ensured by an earlier pass."""
    missing = graph_pass.requires - held
    if missing:
        names = ", ".join(sorted(p.value for p in missing))
        raise PassError(f"pass {graph_pass.name} (step {step}) requires {names}, which no earlier pass ensures "
                        "(a pipeline-order bug)")


def update_properties(graph_pass: GraphPass, held: set[GraphProperty], modified: bool) -> None:
    """P ← (P − invalidates) ∪ ensures after a modifying run, P ∪ ensures otherwise."""
    if modified:
        held -= graph_pass.invalidates
    held |= graph_pass.ensures


def _check_step(step: Step, held: set[GraphProperty]) -> None:
    """Check a step's passes before any of them (or the calibration for them) runs, assuming each modifies."""
    planned = set(held)
    for graph_pass in step.passes:
        check_requirements(graph_pass, planned, step.name)
        update_properties(graph_pass, planned, modified=True)


class CalibratedPass(GraphPass):
    """A pass that needs statistics gathered on calibration data before it runs."""

    @abc.abstractmethod
    def stat_requests(self, graph: gs.Graph, ctx: PassContext) -> Sequence[StatRequest]: ...


@dataclass(frozen=True)
class Step:
    name: str
    passes: tuple[GraphPass, ...]


Collector = Callable[[gs.Graph, Sequence[StatRequest]], Mapping[StatRequest, TensorRange]]


def run_steps(graph: gs.Graph, steps: Iterable[Step], ctx: PassContext, collect: Collector,
              on_step: Callable[[Step], None] | None = None) -> list[PassRecord]:
    """Run each step's passes in order, collecting the statistics each step declares first.

    Raises PassError before a pass whose required properties no earlier pass ensured (module docstring).
    """
    records: list[PassRecord] = []
    held: set[GraphProperty] = set()
    for step in steps:
        _check_step(step, held)
        requests: list[StatRequest] = []
        for graph_pass in step.passes:
            if isinstance(graph_pass, CalibratedPass):
                try:
                    wanted = graph_pass.stat_requests(graph, ctx)
                except QCompileError:
                    raise
                except Exception as exc:  # like GraphPass.__call__: name the pass, keep one line
                    text = str(exc).splitlines()[0] if str(exc) else ""
                    raise PassError(f"pass {graph_pass.name} failed: {type(exc).__name__}: {text}") from exc
                requests.extend(r for r in wanted if r not in requests)
        missing = [r for r in requests if r not in ctx.statistics]
        if missing:
            start = time.perf_counter()
            ctx.statistics.update(collect(graph, missing))
            records.append(PassRecord(step.name, "calibration", time.perf_counter() - start, False,
                                      {"tensors": len(missing)}))
        for graph_pass in step.passes:
            result, seconds = graph_pass(graph, ctx)
            update_properties(graph_pass, held, result.modified)
            records.append(PassRecord(step.name, graph_pass.name, seconds, result.modified, dict(result.stats)))
            if result.modified:
                ctx.statistics.clear()
        if on_step is not None:
            on_step(step)
    return records
