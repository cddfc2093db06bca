"""Running one segment of a skeleton model on the activations that reach it (qcompile.streaming.segments).

For segment [a, b) and calibration item i, with A_i the activations alive at a (the graph inputs are the item's
own arrays):   outputs_i = f_[a,b)(A_i; weights)   where the weights come from the store (FP32), or from the
caller (the dequantised Ŵ, so later segments see what the quantised model computes: GPTQ's sequential
calibration). Only that segment's weights are handed to ONNX Runtime (as in-memory initializers), so a session
holds one segment of the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from qcompile.errors import UnsupportedModelError
from qcompile.runtime_ext.session import GraphOptimization, make_session, ort_error_line
from qcompile.streaming.segments import Segment, node_reads
from qcompile.streaming.store import DETACHED_LOCATION, WeightStore

Activations = dict[str, np.ndarray]


def is_detached(tensor: onnx.TensorProto) -> bool:
    return any(e.key == "location" and e.value == DETACHED_LOCATION for e in tensor.external_data)


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor of the (skeleton) model, from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:   # an op without a schema: the types that inference did find are kept below
        inferred = model
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


class SegmentRunner:
    """Builds and runs the sub-model of one segment (see the module docstring)."""

    def __init__(self, skeleton: onnx.ModelProto, store: WeightStore, types: Mapping[str, int],
                 providers: Sequence[str] = ("CPUExecutionProvider",), custom_op_library: str | None = None) -> None:
        self.skeleton = skeleton
        self.store = store
        self.types = types
        self.providers = tuple(providers)
        self.custom_op_library = custom_op_library
        self.graph_inputs = {v.name for v in skeleton.graph.input}
        self.initializers = {t.name: t for t in skeleton.graph.initializer}

    def weight_names(self, segment: Segment) -> list[str]:
        """The detached initializers the segment's nodes read."""
        reads: set[str] = set()
        for node in self.skeleton.graph.node[segment.start:segment.stop]:
            reads |= node_reads(node)
        return sorted(n for n in reads if n in self.initializers and is_detached(self.initializers[n]))

    def _model(self, segment: Segment, outputs: Sequence[str], weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
        source = self.skeleton
        reads: set[str] = set()
        nodes = source.graph.node[segment.start:segment.stop]
        for node in nodes:
            reads |= node_reads(node)
        inline = [self.initializers[n] for n in sorted(reads)
                  if n in self.initializers and not is_detached(self.initializers[n])]
        inputs = [helper.make_tensor_value_info(n, self.types.get(n, onnx.TensorProto.FLOAT), None)
                  for n in segment.inputs if n in reads]
        inputs += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
                   for n, a in weights.items()]
        graph = helper.make_graph(list(nodes), f"segment_{segment.start}_{segment.stop}", inputs,
                                  [helper.make_tensor_value_info(n, self.types.get(n, onnx.TensorProto.FLOAT), None)
                                   for n in outputs], initializer=inline)
        model = helper.make_model(graph, opset_imports=list(source.opset_import), ir_version=source.ir_version)
        model.functions.extend(source.functions)
        return model

    def run(self, segment: Segment, items: Iterable[Activations], outputs: Sequence[str],
            weights: Mapping[str, np.ndarray] | None = None) -> Iterable[Activations]:
        """For each item, the segment's ``outputs`` (names it computes or receives). ``weights`` replaces
        detached initializers by the caller's arrays; the rest come from the store."""
        names = self.weight_names(segment)
        arrays = {n: (weights[n] if weights and n in weights else self.store.array(n)) for n in names}
        computed = [o for o in outputs if o not in segment.inputs]
        model = self._model(segment, computed, arrays)
        session = make_session(model, providers=self.providers, optimization=GraphOptimization.ALL,
                               initializers=arrays, custom_op_library=self.custom_op_library)
        del arrays
        wanted = {i.name for i in session.get_inputs()}
        for index, item in enumerate(items):
            feed = {k: v for k, v in item.items() if k in wanted}
            try:
                values = session.run(computed, feed) if computed else []
            except Exception as exc:  # ORT's pybind errors derive from Exception only
                raise UnsupportedModelError(f"segment {segment.start}-{segment.stop} fails on calibration item "
                                            f"{index}: {ort_error_line(exc)}") from exc
            result = dict(zip(computed, values))
            result.update({o: item[o] for o in outputs if o in segment.inputs and o in item})
            yield result
