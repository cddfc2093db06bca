"""The KV-cache Llama export (models/smollm2_from_gguf.py llama_kv_graph) on the tiny synthetic Llama of test_models_smollm2: a prefill
from an empty past followed by single-token steps reproduces the numpy reference's logits for every position, and
the presents grow by one position per step (Optimum's layout)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from models.smollm2_from_gguf import cache_names, llama_kv_graph
from tests.test_models_smollm2 import DIM, FIELDS, HEADS, KV, LAYERS, SEQ, VOCAB, _reference, _tensors


def _empty_past() -> dict[str, np.ndarray]:
    empty = np.zeros((1, KV, 0, DIM // HEADS), np.float32)
    return {name: empty for names in cache_names(LAYERS) for name in names[:2]}


def test_prefill_then_steps_match_full_forward():
    tensors = _tensors()
    session = ort.InferenceSession(llama_kv_graph(FIELDS, tensors).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(1).integers(0, VOCAB, (1, SEQ)).astype(np.int64)
    expected = _reference(tensors, ids)
    prefill = 4
    feeds = {"input_ids": ids[:, :prefill], "attention_mask": np.ones((1, prefill), np.int64),
             "position_ids": np.arange(prefill, dtype=np.int64)[None], **_empty_past()}
    out_names = [o.name for o in session.get_outputs()]
    outs = dict(zip(out_names, session.run(None, feeds)))
    np.testing.assert_allclose(outs["logits"][0], expected[:prefill], rtol=1e-4, atol=1e-4)
    for position in range(prefill, SEQ):
        past = {p_k: outs[c_k] for p_k, _, c_k, _ in cache_names(LAYERS)}
        past |= {p_v: outs[c_v] for _, p_v, _, c_v in cache_names(LAYERS)}
        assert past["past_key_values.0.key"].shape == (1, KV, position, DIM // HEADS)
        feeds = {"input_ids": ids[:, position:position + 1], "attention_mask": np.ones((1, position + 1), np.int64),
                 "position_ids": np.array([[position]], np.int64), **past}
        outs = dict(zip(out_names, session.run(None, feeds)))
        np.testing.assert_allclose(outs["logits"][0, 0], expected[position], rtol=1e-4, atol=1e-4)


def test_padding_mask_hides_keys():
    """A masked-out past position must not change the logits: same result as if it were absent."""
    tensors = _tensors()
    session = ort.InferenceSession(llama_kv_graph(FIELDS, tensors).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(2).integers(0, VOCAB, (1, 3)).astype(np.int64)
    base = {"input_ids": ids, "position_ids": np.arange(3, dtype=np.int64)[None], **_empty_past()}
    plain = session.run(["logits"], base | {"attention_mask": np.ones((1, 3), np.int64)})[0]
    padded_past = {k: np.random.default_rng(3).standard_normal((1, KV, 1, DIM // HEADS)).astype(np.float32)
                   for k in _empty_past()}
    masked = session.run(["logits"], base | padded_past | {"attention_mask": np.array([[0, 1, 1, 1]], np.int64)})[0]
    np.testing.assert_allclose(masked, plain, rtol=1e-4, atol=1e-4)
