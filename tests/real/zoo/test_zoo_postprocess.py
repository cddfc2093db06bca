"""The zoo's decoders and metrics (models/zoo/postprocess.py) against numpy references and hand cases."""

from __future__ import annotations

from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.zoo import postprocess as pp


def _flood_fill_components(mask: np.ndarray) -> list[set]:
    seen, components = np.zeros_like(mask, bool), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, members = True, deque([start]), set()
        while queue:
            r, c = queue.popleft()
            members.add((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        queue.append((nr, nc))
        components.append(members)
    return components


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_connected_components_match_a_flood_fill(mask):
    got = sorted(sorted(map(tuple, c.tolist())) for c in pp.connected_components(mask))
    want = sorted(sorted(c) for c in _flood_fill_components(mask))
    assert got == want


def test_db_boxes_one_box_per_text_region_and_low_scores_dropped():
    prob = np.zeros((40, 60), np.float32)
    prob[5:15, 4:30] = 0.9          # a word
    prob[25:33, 10:50] = 0.8        # a line
    prob[20, 55] = 0.9              # a speck: short side 1 < 3
    prob[35:39, 40:58] = 0.35       # above the bitmap threshold, mean score below 0.5
    boxes = pp.db_boxes(prob)
    assert sorted(boxes.tolist()) == [[4, 5, 30, 15], [10, 25, 50, 33]]


def test_iou_nms_and_box_f1():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    assert np.allclose(pp.iou_matrix(a, a), np.eye(2))
    assert np.isclose(pp.iou_matrix(a[:1], np.array([[5, 0, 15, 10]], float))[0, 0], 50 / 150)
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], float)
    assert pp.nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    assert pp.box_f1(a, [0, 0], a, [0, 0]) == 1.0
    assert pp.box_f1(a, [0, 1], a, [1, 0]) == 0.0                      # same boxes, classes swapped
    assert pp.box_f1(a, [0, 0], a[:1], [0]) == 2 / 3
    assert pp.box_f1(np.zeros((0, 4)), [], np.zeros((0, 4)), []) == 1.0
    assert pp.box_f1(a, [0, 0], np.zeros((0, 4)), []) == 0.0


def test_picodet_decode_puts_a_box_where_its_distribution_says():
    reg_max, stride = 7, 8
    h, w = 16, 16
    scores = [np.zeros((1, (h // s) * (w // s), 2), np.float32) for s in (8, 16)]
    dists = [np.full((1, (h // s) * (w // s), 4 * (reg_max + 1)), -50.0, np.float32) for s in (8, 16)]
    cell = 1 * (w // stride) + 1                                       # row 1, col 1: centre (12, 12)
    scores[0][0, cell, 1] = 0.9
    for side, distance in enumerate((1, 1, 2, 3)):
        dists[0][0, cell, side * (reg_max + 1) + distance] = 50.0
    boxes, classes = pp.picodet_detections(scores + dists, (h, w), strides=(8, 16))
    assert classes.tolist() == [1]
    assert np.allclose(boxes, [[12 - 8, 12 - 8, 12 + 16, 12 + 24]])


def test_yolox_decode():
    n = (32 // 8) ** 2 + (32 // 16) ** 2 + (32 // 32) ** 2
    out = np.zeros((1, n, 6), np.float32)
    out[0, 5] = [0.5, 0.5, np.log(2.0), np.log(4.0), 0.9, 0.5]          # stride 8, row 1 col 1
    boxes, classes = pp.yolox_detections(out, (32, 32))
    assert classes.tolist() == [0]
    assert np.allclose(boxes, [[12 - 8, 12 - 16, 12 + 8, 12 + 16]])


def test_ctc_greedy_merges_repeats_then_drops_blanks():
    assert pp.ctc_greedy(np.array([0, 3, 3, 0, 3, 5, 5, 0])) == [3, 3, 5]
    assert pp.ctc_greedy(np.array([], np.int64)) == []


@settings(max_examples=80, deadline=None)
@given(st.text("abc", max_size=8), st.text("abc", max_size=8), st.text("abc", max_size=8))
def test_edit_distance_is_a_metric(a, b, c):
    assert pp.edit_distance(a, a) == 0
    assert pp.edit_distance(a, b) == pp.edit_distance(b, a) <= max(len(a), len(b))
    assert pp.edit_distance(a, c) <= pp.edit_distance(a, b) + pp.edit_distance(b, c)
    assert pp.edit_distance(a, "") == len(a)


def test_string_and_char_agreement():
    assert pp.string_agreement(["ab", "cd"], ["ab", "ce"]) == 0.5
    assert np.isclose(pp.char_agreement([list("ab"), list("cd")], [list("ab"), list("ce")]), 1 - 1 / 4)
