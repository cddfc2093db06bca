"""Smoke tests of benchmarks/recurrent_forms.py and the data/decoding half of benchmarks/crnn_ocr.py (the CRNN
itself comes from the ddddocr wheel, which the tests do not download)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_recurrent_forms_rows():
    forms = _load("recurrent_forms")
    rows = {row[4]: row for row in forms.measure(hidden=16, inputs=8, steps=5, directions=2, samples=2, repeats=2)}
    assert set(rows) == {"float", "dequantize_linear", "dynamic_quantize"}
    assert rows["float"][6] == 0.0
    assert 0 < rows["dequantize_linear"][6] < 0.02 and 0 < rows["dynamic_quantize"][6] < 0.05
    assert rows["dequantize_linear"][7] < rows["float"][7] / 2          # int8 W and R


def test_ctc_decode_merges_repeats_and_drops_blanks():
    crnn = _load("crnn_ocr")
    steps = [0, 5, 5, 0, 5, 7, 7, 0]
    logits = np.full((len(steps), 1, 10), -1.0, np.float32)
    logits[np.arange(len(steps)), 0, steps] = 1.0
    assert crnn.ctc_decode(logits) == (5, 5, 7)


@pytest.mark.skipif(not Path("/usr/share/fonts/truetype/dejavu").is_dir(), reason="DejaVu fonts not installed")
def test_captcha_images_are_preprocessed_as_ddddocr_does():
    crnn = _load("crnn_ocr")
    fonts = sorted(crnn.FONT_DIR.glob("DejaVuSans*.ttf"))
    feeds, texts = crnn.make_set(3, seed=1, fonts=fonts)
    again, same_texts = crnn.make_set(3, seed=1, fonts=fonts)
    assert texts == same_texts and all(np.array_equal(a["input1"], b["input1"]) for a, b in zip(feeds, again))
    for feed, text in zip(feeds, texts):
        x = feed["input1"]
        assert x.dtype == np.float32 and x.shape[:3] == (1, 1, 64) and 0.0 <= x.min() and x.max() <= 1.0
        assert 4 <= len(text) <= 6 and set(text) <= set(crnn.ALPHABET)
