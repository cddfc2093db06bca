"""Shape and type inference: annotate every tensor with its element type and (possibly symbolic) shape.

Runs ONNX's inference from scratch (intermediate annotations dropped first, so shapes that became known after
a fold replace stale unknown dims) with data propagation and keeps what it found; where it fails
(contrib ops, unknown domains) the graph keeps what it had and the failure is reported, not raised.
"""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs

from qcompile.pass_infra import GraphPass, PassContext, PassResult

logger = logging.getLogger(__name__)


class InferShapesPass(GraphPass):
    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        model = gs.export_onnx(graph, do_type_check=False)
        # infer from scratch: stale intermediate shapes (e.g. unknown dims from before a fold) would be kept
        del model.graph.value_info[:]
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                         data_prop=True)
        except Exception as exc:  # onnx raises several types; inference is best-effort by design
            message = f"shape inference failed, continuing without it: {str(exc).splitlines()[0]}"
            logger.warning(message)
            ctx.warnings.append(message)
            return PassResult(modified=False, stats={"failed": 1})
        new_graph = gs.import_onnx(inferred)
        known = {t.name: t for t in new_graph.tensors().values()}
        annotated = 0
        for name, tensor in graph.tensors().items():
            other = known.get(name)
            if isinstance(tensor, gs.Variable) and other is not None and isinstance(other, gs.Variable):
                if tensor.dtype is None and other.dtype is not None:
                    tensor.dtype = other.dtype
                    annotated += 1
                if other.shape is not None and tensor not in graph.inputs:
                    tensor.shape = other.shape
        return PassResult(modified=False, stats={"annotated": annotated})
