"""The SmolLM2 recipe's graph builder and tokenizer on a tiny synthetic Llama (no download): the ONNX graph
matches a numpy forward pass of the same architecture (RMSNorm, interleaved rotary, grouped-query causal
attention, SwiGLU, tied head) to 1e-4, and the byte-level BPE round-trips text through its merges."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from models.smollm2_from_gguf import ByteLevelBPE, _byte_to_unicode, llama_graph, token_windows

DIM, HEADS, KV, FF, VOCAB, LAYERS, SEQ = 16, 4, 2, 24, 40, 2, 6
FIELDS = {"llama.embedding_length": DIM, "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV,
          "llama.block_count": LAYERS, "llama.attention.layer_norm_rms_epsilon": 1e-5,
          "llama.rope.freq_base": 10000.0}


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hd = DIM // HEADS
    t = {"token_embd.weight": rng.standard_normal((VOCAB, DIM)).astype(np.float32),
         "output_norm.weight": (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)}
    for i in range(LAYERS):
        shapes = {"attn_q": (DIM, DIM), "attn_k": (KV * hd, DIM), "attn_v": (KV * hd, DIM), "attn_output": (DIM, DIM),
                  "ffn_gate": (FF, DIM), "ffn_up": (FF, DIM), "ffn_down": (DIM, FF)}
        for name, shape in shapes.items():                     # GGUF/PyTorch layout [out, in]
            t[f"blk.{i}.{name}.weight"] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
        for name in ("attn_norm", "ffn_norm"):
            t[f"blk.{i}.{name}.weight"] = (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)
    return t


def _reference(t: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    hd, group = DIM // HEADS, HEADS // KV
    x = t["token_embd.weight"][ids[0]].astype(np.float64)

    def norm(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-5) * w

    def rope(v):                                               # v [S, h, hd], pairs (2i, 2i+1)
        ang = np.arange(SEQ)[:, None] * 10000.0 ** (-np.arange(0, hd, 2) / hd)
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = np.empty_like(v)
        out[..., 0::2] = v[..., 0::2] * cos - v[..., 1::2] * sin
        out[..., 1::2] = v[..., 0::2] * sin + v[..., 1::2] * cos
        return out

    mask = np.triu(np.full((SEQ, SEQ), -np.inf), 1)
    for i in range(LAYERS):
        w = {k.split(".")[2]: v for k, v in t.items() if k.startswith(f"blk.{i}.")}
        h = norm(x, w["attn_norm"])
        q = rope((h @ w["attn_q"].T).reshape(SEQ, HEADS, hd))
        k = rope((h @ w["attn_k"].T).reshape(SEQ, KV, hd))
        v = (h @ w["attn_v"].T).reshape(SEQ, KV, hd)
        context = np.empty((SEQ, HEADS, hd))
        for head in range(HEADS):
            scores = q[:, head] @ k[:, head // group].T / np.sqrt(hd) + mask
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            context[:, head] = (probs / probs.sum(-1, keepdims=True)) @ v[:, head // group]
        x = x + context.reshape(SEQ, DIM) @ w["attn_output"].T
        h = norm(x, w["ffn_norm"])
        gate = h @ w["ffn_gate"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w["ffn_up"].T)) @ w["ffn_down"].T
    return norm(x, t["output_norm.weight"]) @ t["token_embd.weight"].T.astype(np.float64)


def test_llama_graph_matches_numpy():
    tensors = _tensors()
    model = llama_graph(FIELDS, tensors, SEQ)
    ids = np.random.default_rng(1).integers(0, VOCAB, (1, SEQ)).astype(np.int64)
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids})[0]
    np.testing.assert_allclose(logits[0], _reference(tensors, ids), rtol=1e-4, atol=1e-4)


def test_byte_level_bpe():
    byte_map = _byte_to_unicode()
    assert len(set(byte_map.values())) == 256
    tokens = [byte_map[b] for b in range(256)] + ["Ġt", "he", "Ġthe"]
    merges = ["Ġ t", "h e", "Ġt he"]
    bpe = ByteLevelBPE(tokens, merges)
    ids = bpe.encode("the there 42")
    decoded = "".join(tokens[i] for i in ids)
    assert decoded == "".join(byte_map[b] for b in "the there 42".encode())
    assert tokens.index("Ġthe") in ids and token_windows(list(range(10)), 4).shape == (2, 1, 4)
