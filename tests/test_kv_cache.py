"""KV-cache decoders (qcompile/data/kv_cache.py, qcompile/accuracy/decode.py) on the tiny synthetic Llama of
test_models_smollm2 exported with a cache (Optimum layout): layout detection, token-only windows expanded into a
prefill over an empty past plus decode steps over FP32 pasts, greedy decoding equal to the full-forward argmax, and
a compile from token-only data whose report carries a real-decode check."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.smollm2_from_gguf import cache_names, llama_graph, llama_kv_graph
from qcompile import CompileConfig, compile_model
from qcompile.config import Preset
from qcompile.data import model_input_specs, open_calibration_source
from qcompile.data.kv_cache import (DEFAULT_DECODE_STEPS, detect_kv_cache, empty_pasts, greedy_decode,
                                    kv_calibration_source)
from qcompile.errors import CalibrationDataError
from tests.test_models_smollm2 import DIM, FIELDS, HEADS, KV, LAYERS, SEQ, VOCAB, _tensors


@pytest.fixture(scope="module")
def kv_model() -> onnx.ModelProto:
    return llama_kv_graph(FIELDS, _tensors())


def _windows(count: int, length: int = SEQ, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, VOCAB, (1, length)).astype(np.int64)} for _ in range(count)]


def test_layout_detected_only_for_cache_models(kv_model):
    layout = detect_kv_cache(kv_model)
    assert layout is not None and layout.logits == "logits"
    assert layout.attention_mask == "attention_mask" and layout.position_ids == "position_ids"
    assert [(p.past, p.present, p.sequence_axis) for p in layout.caches] == \
        [(names[i], names[i + 2], 2) for names in cache_names(LAYERS) for i in (0, 1)]
    assert detect_kv_cache(llama_graph(FIELDS, _tensors(), SEQ)) is None


def test_empty_past_is_valid_calibration_data(kv_model):
    """The prefill's empty cache (sequence axis 0) passes validation; an empty batch still does not."""
    layout = detect_kv_cache(kv_model)
    specs = model_input_specs(kv_model)
    feed = {"input_ids": np.zeros((1, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64),
            "position_ids": np.arange(3, dtype=np.int64)[None], **empty_pasts(layout, 1)}
    assert len(list(open_calibration_source([feed], specs))) == 1
    bad = dict(feed, **{"past_key_values.0.key": np.zeros((1, KV, 2, 0), np.float32)})
    with pytest.raises(CalibrationDataError, match="dim 3 is 0"):
        list(open_calibration_source([bad], specs))


def test_token_windows_expand_to_prefill_and_steps(kv_model):
    layout = detect_kv_cache(kv_model)
    specs = model_input_specs(kv_model)
    tokens = open_calibration_source(_windows(2), [s for s in specs if s.name == "input_ids"])
    source = kv_calibration_source(kv_model, layout, tokens, specs)
    feeds = list(source)
    assert source.num_samples == len(feeds) == 2 * (1 + DEFAULT_DECODE_STEPS)
    prefill = SEQ - DEFAULT_DECODE_STEPS
    for window in range(2):
        first = feeds[window * (1 + DEFAULT_DECODE_STEPS)]
        assert first["input_ids"].shape == (1, prefill) and first["past_key_values.0.key"].shape[2] == 0
        for step in range(1, 1 + DEFAULT_DECODE_STEPS):
            feed = feeds[window * (1 + DEFAULT_DECODE_STEPS) + step]
            past = prefill + step - 1
            assert feed["input_ids"].shape == (1, 1)
            assert feed["past_key_values.0.value"].shape == (1, KV, past, DIM // HEADS)
            assert feed["attention_mask"].shape == (1, past + 1)
            assert feed["position_ids"].tolist() == [[past]]


def test_greedy_decode_matches_full_forward_argmax(kv_model):
    """Each generated token is the argmax of the non-cache model run on the prompt plus what came before."""
    layout = detect_kv_cache(kv_model)
    session = ort.InferenceSession(kv_model.SerializeToString(), providers=["CPUExecutionProvider"])
    prompt = _windows(1, length=3, seed=4)[0]["input_ids"]
    generated = greedy_decode(session, layout, prompt, SEQ - 3)[0]
    full = ort.InferenceSession(llama_graph(FIELDS, _tensors(), SEQ).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    sequence = np.concatenate([prompt[0], generated])[None]
    logits = full.run(None, {"input_ids": sequence})[0][0]
    assert generated.tolist() == logits[2:SEQ - 1].argmax(-1).tolist()


def test_compile_from_token_only_windows_checks_a_real_decode(kv_model):
    result = compile_model(kv_model, _windows(4), CompileConfig(preset=Preset.W8A16))
    decode = result.report.fidelity["decode"]
    assert decode["prompts"] == 4 and decode["new_tokens"] > 0
    assert 0.0 <= decode["matching_prefix"] <= 1.0 and decode["first_token"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    # 8-bit weights on a model this small barely move the logits: the decode stays on FP32's path at first
    assert decode["first_token"] == 1.0
    assert result.report.data["input"]["calibration"]["samples"] == 4 * (1 + DEFAULT_DECODE_STEPS)
    assert result.report.data["summary"]["quantized_nodes"] == 7 * LAYERS + 1


def test_too_short_windows_are_refused(kv_model):
    with pytest.raises(CalibrationDataError, match=">= 2 tokens"):
        compile_model(kv_model, _windows(2, length=1), CompileConfig(preset=Preset.W8A16))
