"""Pad folding: a constant-mode zero Pad on spatial dims followed by a Conv becomes the Conv's own padding.

    Conv(Pad(x, p), W; pads=q)  =  Conv(x, W; pads=q + p_spatial)

valid when mode='constant', the pad value is 0 (or absent), the batch and channel dims are not padded, all
pads are ≥ 0 and the Pad output feeds only Conv nodes with auto_pad NOTSET. Besides saving a copy, this keeps
the quantised Conv's input a direct Q/DQ point, which ORT fuses into QLinearConv.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult


def merged_conv_pads(conv_pads: list[int], pad_amounts: np.ndarray) -> list[int] | None:
    """ONNX Pad pads [x1_begin, x2_begin, ..., x1_end, ...] (rank r) + Conv pads over the r-2 spatial dims."""
    rank = pad_amounts.size // 2
    begins, ends = pad_amounts[:rank], pad_amounts[rank:]
    if np.any(pad_amounts < 0) or np.any(begins[:2] != 0) or np.any(ends[:2] != 0):
        return None
    spatial = rank - 2
    conv = list(conv_pads) if conv_pads else [0] * (2 * spatial)
    if len(conv) != 2 * spatial:
        return None
    return [int(conv[i] + begins[2 + i]) for i in range(spatial)] + \
           [int(conv[spatial + i] + ends[2 + i]) for i in range(spatial)]


class FusePadIntoConvPass(GraphPass):
    """Zero Pad before Conv into the Conv's pads (see module docstring)."""

    requires = frozenset({GraphProperty.CONSTANTS_FOLDED})    # pad amounts computed from Shape are constants
    invalidates = frozenset()      # the Conv's output is unchanged

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        fused = declined = 0
        for pad in [n for n in graph.nodes if n.op == "Pad"]:
            consumers = list(pad.outputs[0].outputs)
            amounts = pad.inputs[1] if len(pad.inputs) > 1 else None
            value = pad.inputs[2] if len(pad.inputs) > 2 else None
            ok = (pad.attrs.get("mode", "constant") in ("constant", b"constant")
                  and isinstance(amounts, gs.Constant)
                  and (value is None or (isinstance(value, gs.Constant) and not np.any(value.values)))
                  and (len(pad.inputs) < 4 or pad.inputs[3] is None or pad.inputs[3].name == "")
                  and consumers and all(c.op == "Conv" and c.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
                                        for c in consumers)
                  and pad.outputs[0].name not in {t.name for t in graph.outputs})
            merged = [merged_conv_pads(c.attrs.get("pads", []), np.asarray(amounts.values).astype(np.int64))
                      for c in consumers] if ok else [None]
            if not ok or any(m is None for m in merged):
                declined += 1
                continue
            for conv, pads in zip(consumers, merged):
                conv.attrs["pads"] = pads
                conv.inputs[0] = pad.inputs[0]
            pad.outputs = []
            fused += 1
        if fused:
            graph.cleanup().toposort()
        return PassResult(modified=fused > 0, stats={"fused": fused, "declined": declined})
