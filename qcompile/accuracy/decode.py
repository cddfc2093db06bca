"""A real generation loop as a fidelity check for KV-cache decoders.

Teacher-forced logits can look close (cosine 0.99) while the model decodes garbage, because a deployed decoder
feeds back its own argmax over its own cache. So for a decoder with a KV cache (qcompile/data/kv_cache.py) both
models generate greedily from the same prompts — a prefill over an empty past, then ``new_tokens`` single-token
steps — and we compare the token sequences g_fp32, g_q:

    matching_prefix = mean over prompts of  max{k : g_fp32[:k] = g_q[:k]} / new_tokens
    first_token     = mean over prompts of  [g_fp32[0] = g_q[0]]
    token_agreement = mean over prompts and positions of [g_fp32[t] = g_q[t]]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompile.data.kv_cache import KvCacheLayout, greedy_decode
from qcompile.data.specs import Feed
from qcompile.runtime_ext.session import make_session

logger = logging.getLogger(__name__)

DECODE_PROMPTS = 4
DECODE_NEW_TOKENS = 16


def prompts_from(feeds: Iterable[Feed], layout: KvCacheLayout, count: int) -> list[np.ndarray]:
    """The prefills among ``feeds`` (those whose cache is empty), as prompts of batch 1."""
    prompts = []
    for feed in feeds:
        pair = layout.caches[0]
        if feed[pair.past].shape[pair.sequence_axis] == 0:
            prompts.extend(row[None] for row in feed[layout.input_ids])
        if len(prompts) >= count:
            break
    return prompts[:count]


def matching_prefix(a: np.ndarray, b: np.ndarray) -> int:
    unequal = np.flatnonzero(a != b)
    return int(unequal[0]) if unequal.size else int(a.size)


def measure_decode(reference: onnx.ModelProto | Path, quantised: onnx.ModelProto, layout: KvCacheLayout,
                   feeds: Iterable[Feed], *, prompts: int = DECODE_PROMPTS, new_tokens: int = DECODE_NEW_TOKENS,
                   custom_op_library: str | None = None) -> dict[str, Any]:
    chosen = prompts_from(feeds, layout, prompts)
    if not chosen:
        return {"prompts": 0, "note": "no prefill among the calibration items"}
    fp32 = make_session(reference, custom_op_library=custom_op_library)
    quant = make_session(quantised, custom_op_library=custom_op_library)
    prefixes, firsts, equal = [], [], []
    for prompt in chosen:
        want = greedy_decode(fp32, layout, prompt, new_tokens)[0]
        got = greedy_decode(quant, layout, prompt, new_tokens)[0]
        prefixes.append(matching_prefix(want, got) / new_tokens)
        firsts.append(float(want[0] == got[0]))
        equal.append(float(np.mean(want == got)))
    result = {"prompts": len(chosen), "new_tokens": new_tokens, "matching_prefix": float(np.mean(prefixes)),
              "first_token": float(np.mean(firsts)), "token_agreement": float(np.mean(equal))}
    logger.info("greedy decode vs FP32 on %d prompt(s), %d new tokens: first token %.2f, matching prefix %.2f",
                len(chosen), new_tokens, result["first_token"], result["matching_prefix"])
    return result
