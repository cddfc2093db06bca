"""Cutting a graph into segments between which little is alive, so it can be run one segment at a time.

Nodes n_0 … n_{m-1} in topological order (ONNX requires it). A tensor t is produced at P(t) (-1 for a graph input)
and last read at L(t) (m when it is a graph output; reads inside If/Loop/Scan bodies count for the owner node).
The activations alive at the cut before node p are

    live(p) = { t not constant : P(t) < p <= L(t) }

A segment [a, b) needs live(a) and hands live(b) on. In a decoder-only transformer |live(p)| is smallest between
the blocks (the residual stream, plus tensors every block reads such as a mask), and larger inside them (the
normalised input, q/k/v, ...). So the cuts are the positions, between the first and the last node to quantise,
where |live(p)| is minimal; segments without a node to quantise join the next one. Each segment then holds one
decoder block or half of one (attention / MLP), whatever the model calls them.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from qcompile.graph.scopes import proto_graphs


@dataclass(frozen=True)
class Segment:
    start: int
    stop: int
    inputs: tuple[str, ...]        # live(start): activations it reads from earlier segments or the graph inputs
    outputs: tuple[str, ...]       # live(stop): what later segments and the graph outputs need
    targets: tuple[str, ...]       # names of the nodes to quantise inside it


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node reads: its inputs and the outer-scope names its If/Loop/Scan bodies read."""
    reads = {i for i in node.input if i}
    for attr in node.attribute:
        bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for body in bodies:
            for graph in proto_graphs(body):
                own = {v.name for v in graph.input} | {t.name for t in graph.initializer} | \
                      {o for n in graph.node for o in n.output}
                reads |= {i for n in graph.node for i in n.input if i and i not in own}
    return reads


def live_sets(graph: onnx.GraphProto) -> list[set[str]]:
    """live(p) for p = 0 … m (see the module docstring)."""
    constants = {t.name for t in graph.initializer}
    nodes = list(graph.node)
    produced = {v.name: -1 for v in graph.input if v.name not in constants}
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node_reads(node):
            last_use[name] = index
        for name in node.output:
            if name:
                produced[name] = index
    for output in graph.output:
        last_use[output.name] = len(nodes)
    starts: dict[int, list[str]] = {}
    for name, at in produced.items():
        if name in last_use and last_use[name] > at:
            starts.setdefault(at + 1, []).append(name)
    live: list[set[str]] = []
    current: set[str] = set()
    for p in range(len(nodes) + 1):
        current |= set(starts.get(p, ()))
        current = {t for t in current if last_use[t] >= p}
        live.append(set(current))
    return live


def split_segments(graph: onnx.GraphProto, target_nodes: set[str]) -> list[Segment]:
    """Segments of ``graph`` each holding at least one of ``target_nodes`` (module docstring)."""
    nodes = list(graph.node)
    indices = [i for i, n in enumerate(nodes) if n.name in target_nodes]
    if not indices:
        return []
    live = live_sets(graph)
    first, last = indices[0], indices[-1]
    inner = range(first + 1, last + 1)
    floor = min((len(live[p]) for p in inner), default=0)
    cuts = [0] + [p for p in inner if len(live[p]) == floor] + [len(nodes)]
    segments: list[Segment] = []
    start = 0
    for stop in cuts[1:]:
        names = tuple(nodes[i].name for i in range(start, stop) if nodes[i].name in target_nodes)
        if not names and stop != len(nodes):
            continue                      # nothing to quantise yet: the segment runs on to the next cut
        if not names and segments:        # a tail without targets joins the last segment
            prev = segments.pop()
            segments.append(Segment(prev.start, stop, prev.inputs, tuple(sorted(live[stop])), prev.targets))
            break
        segments.append(Segment(start, stop, tuple(sorted(live[start])), tuple(sorted(live[stop])), names))
        start = stop
    return segments
