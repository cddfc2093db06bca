"""The one place where pass order is decided.

    prepare   : name nodes → repeat until stable [infer shapes → fold constants (Constant nodes, shape
                subgraphs) → fold BatchNorm → fold Pad into Conv] → infer shapes          (no data)
    quantize  : select nodes, insert Q/DQ                                                  (activation ranges)
    lower     : remove what the rewrite left unused                                        (no data)
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from qcompile.config import CompileConfig
from qcompile.pass_infra import GraphPass, PassContext, PassResult, RepeatUntilStable, Step
from qcompile.passes.fold_batchnorm import FoldBatchNormPass
from qcompile.passes.fold_constants import FoldConstantsPass
from qcompile.passes.fuse_pad_into_conv import FusePadIntoConvPass
from qcompile.passes.infer_shapes import InferShapesPass
from qcompile.passes.insert_qdq import InsertQDQPass
from qcompile.passes.name_nodes import NameNodesPass


class CleanupPass(GraphPass):
    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = len(graph.nodes)
        graph.cleanup().toposort()
        return PassResult(modified=len(graph.nodes) != before, stats={"removed": before - len(graph.nodes)})


def build_steps(config: CompileConfig) -> list[Step]:
    return [
        Step("prepare", (NameNodesPass(), RepeatUntilStable((InferShapesPass(), FoldConstantsPass(),
                                                             FoldBatchNormPass(), FusePadIntoConvPass())),
                         InferShapesPass())),
        Step("quantize", (InsertQDQPass(),)),
        Step("lower", (CleanupPass(),)),
    ]
