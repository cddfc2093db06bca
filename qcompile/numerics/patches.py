"""The input rows a weight row multiplies: im2col patches of a Conv input, or the last axis of a MatMul/Gemm input.

A Conv with weight W [Co, Ci/g, k_1, .., k_d] computes, at every output position p,

    y[o, p] = Σ_{c, t} W[o, c, t] · x_pad[g(o)·Ci/g + c, p·stride + t·dilation]

so with the patch vector P_g(p) = (x_pad[g·Ci/g + c, p·stride + t·dilation])_{c, t} ∈ R^(Ci/g · Πk) the Conv is
the matrix product y[o, p] = W[o] · P_{g(o)}(p) of the flattened weight row and the patch of its group.
``conv_patches`` returns those patches as rows [positions, groups, K] (1-D and 2-D Convs; a 1-D Conv is a
2-D one of height 1). A MatMul/Gemm input [..., K] is already rows: [positions, 1, K].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchGeometry:
    """How a Conv reads its input: kernel, strides, dilations, pads (begins then ends), groups, auto_pad."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    group: int = 1
    auto_pad: str = "NOTSET"

    @property
    def rank(self) -> int:
        return len(self.kernel)

    def explicit_pads(self, spatial: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """(begin, end) per spatial axis; SAME_UPPER/SAME_LOWER resolved for these input sizes."""
        if self.auto_pad == "VALID":
            return tuple((0, 0) for _ in spatial)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                out = -(-size // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                small, large = total // 2, total - total // 2
                pads.append((small, large) if self.auto_pad == "SAME_UPPER" else (large, small))
            return tuple(pads)
        return tuple((self.pads[i], self.pads[i + self.rank]) for i in range(self.rank))


@dataclass(frozen=True, eq=False)
class PatchMoments:
    """Mean outer product [G, K, K] and mean [G, K] of the patches of each group, over ``rows`` positions."""

    hessian: np.ndarray
    mean: np.ndarray
    rows: int

    def as_json(self) -> dict:
        return {"rows": self.rows, "groups": int(self.mean.shape[0]), "patch": int(self.mean.shape[1])}


def conv_patches(x: np.ndarray, geometry: PatchGeometry, positions: np.ndarray | None = None) -> np.ndarray:
    """Patches of a Conv input x [N, C, *spatial] as rows [N·positions, group, C/group · Πkernel]; with
    ``positions`` (indices into the N·positions output positions) only those rows."""
    if geometry.rank == 1:
        geometry = PatchGeometry((1, *geometry.kernel), (1, *geometry.strides), (1, *geometry.dilations),
                                 (0, geometry.pads[0], 0, geometry.pads[1]), geometry.group, geometry.auto_pad)
        x = x[:, :, None, :]
    if geometry.rank != 2 or x.ndim != 4:
        raise ValueError(f"patches of a {x.ndim - 2}-d Conv input are not supported")
    n, channels = x.shape[:2]
    (top, bottom), (left, right) = geometry.explicit_pads(tuple(x.shape[2:]))
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.strides, geometry.dilations
    span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    # [N, C, Ho, Wo, kh, kw] -> [N, Ho, Wo, C, kh, kw] -> [N·Ho·Wo, group, C/group·kh·kw]
    by_position = windows.transpose(0, 2, 3, 1, 4, 5)
    if positions is None:
        rows = np.ascontiguousarray(by_position)
    else:
        n_index, rest = np.divmod(positions, by_position.shape[1] * by_position.shape[2])
        rows = by_position[n_index, *np.divmod(rest, by_position.shape[2])]
    return rows.reshape(-1, geometry.group, (channels // geometry.group) * kh * kw)


def conv_positions(x_shape: tuple[int, ...], geometry: PatchGeometry) -> int:
    """How many output positions (over the batch) a Conv input of this shape gives."""
    if geometry.rank == 1:
        return conv_positions((*x_shape[:2], 1, x_shape[2]),
                              PatchGeometry((1, *geometry.kernel), (1, *geometry.strides), (1, *geometry.dilations),
                                            (0, geometry.pads[0], 0, geometry.pads[1]), geometry.group,
                                            geometry.auto_pad))
    count = x_shape[0]
    for size, (begin, end), k, s, d in zip(x_shape[2:], geometry.explicit_pads(tuple(x_shape[2:])),
                                           geometry.kernel, geometry.strides, geometry.dilations):
        count *= (size + begin + end - (k - 1) * d - 1) // s + 1
    return count


def matrix_rows(x: np.ndarray) -> np.ndarray:
    """A MatMul/Gemm input [..., K] as rows [positions, 1, K]."""
    return x.reshape(-1, 1, x.shape[-1])
