"""Decoders with a KV cache (Hugging Face Optimum's layout): calibrate them from token-only data.

A KV-cache decoder maps (input_ids [B, S], attention_mask [B, P+S], position_ids [B, S], past_i [B, h, P, d])
to (logits, present_i [B, h, P+S, d]), present_i = concat(past_i, k_i(new tokens)) along the sequence axis. Users
have token windows, not cache tensors, so a token-only window w of length n becomes, for calibration,

    the prefill      (w[:m], empty pasts, P = 0)                                     m = n - steps
    decode steps     (w[t], pasts = the FP32 model's presents after w[:t]),  t = m .. n-1

with pasts computed by the FP32 model itself: calibration sees both paths a deployed decoder runs (the prefill and
single-token steps over a growing cache), and nobody hand-builds cache tensors. ``greedy_decode`` runs a real
generation loop (prefill from an empty past, then argmax steps) for the report's decode check.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from qcompile.data.readers import FileKind, npz_shapes, scan_folder
from qcompile.data.source import CalibrationSource
from qcompile.data.specs import (Feed, InputSpec, data_error, model_input_specs, past_sequence_axis,
                                  present_name_for)
from qcompile.runtime_ext.session import make_session

TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")
DEFAULT_DECODE_STEPS = 4


@dataclass(frozen=True)
class CachePair:
    past: str          # graph input
    present: str       # graph output
    sequence_axis: int


@dataclass(frozen=True)
class KvCacheLayout:
    """Which inputs feed tokens and which input/output pairs carry the cache."""

    input_ids: str
    logits: str
    attention_mask: str | None
    position_ids: str | None
    caches: tuple[CachePair, ...]
    past_specs: tuple[InputSpec, ...]

    @property
    def past_names(self) -> frozenset[str]:
        return frozenset(pair.past for pair in self.caches)


def detect_kv_cache(model: onnx.ModelProto) -> KvCacheLayout | None:
    """The model's cache layout, when it has an ``input_ids`` input and past inputs each paired with a present
    output; None for every other model."""
    specs = model_input_specs(model)
    names = {s.name for s in specs}
    outputs = {o.name for o in model.graph.output}
    pasts = [s for s in specs if past_sequence_axis(s) is not None and present_name_for(s.name) in outputs]
    if "input_ids" not in names or not pasts:
        return None
    caches = tuple(CachePair(s.name, present_name_for(s.name), past_sequence_axis(s)) for s in pasts)
    presents = {pair.present for pair in caches}
    logits = next((o.name for o in model.graph.output if o.name not in presents), None)
    if logits is None:
        return None
    return KvCacheLayout(input_ids="input_ids", logits=logits,
                         attention_mask="attention_mask" if "attention_mask" in names else None,
                         position_ids="position_ids" if "position_ids" in names else None,
                         caches=caches, past_specs=tuple(pasts))


def first_item_names(calib: Any) -> frozenset[str] | None:
    """The array names in the first calibration item (a folder of .npz files or a list of dicts), unread."""
    if isinstance(calib, (str, Path)):
        kind, paths = scan_folder(Path(calib))
        if kind is not FileKind.NPZ or not paths:
            return None
        try:
            return frozenset(npz_shapes(paths[0]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):   # the source names the bad file later
            return None
    if isinstance(calib, (list, tuple)) and calib and isinstance(calib[0], Mapping):
        return frozenset(str(k) for k in calib[0])
    return None


def empty_pasts(layout: KvCacheLayout, batch: int) -> Feed:
    feeds = {}
    for spec, pair in zip(layout.past_specs, layout.caches):
        shape = [batch if axis == 0 else (0 if axis == pair.sequence_axis else dim) for axis, dim in
                 enumerate(spec.shape)]
        if any(not isinstance(d, int) for d in shape):
            raise data_error(f"cannot build an empty cache for '{spec.name}': its shape {spec.shape} has "
                             "symbolic dims other than batch and sequence")
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def step_feed(layout: KvCacheLayout, tokens: np.ndarray, start: int, pasts: Feed) -> Feed:
    """The feed for ``tokens`` [B, S] at positions start .. start+S-1 over ``pasts`` of ``start`` positions."""
    batch, length = tokens.shape
    feed = {layout.input_ids: tokens, **pasts}
    if layout.attention_mask is not None:
        feed[layout.attention_mask] = np.ones((batch, start + length), np.int64)
    if layout.position_ids is not None:
        feed[layout.position_ids] = np.broadcast_to(np.arange(start, start + length, dtype=np.int64),
                                                    (batch, length)).copy()
    return feed


def presents_as_pasts(layout: KvCacheLayout, outputs: Mapping[str, np.ndarray]) -> Feed:
    return {pair.past: outputs[pair.present] for pair in layout.caches}


def run_named(session: ort.InferenceSession, feed: Feed) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def expand_window(session: ort.InferenceSession, layout: KvCacheLayout, tokens: np.ndarray,
                  steps: int) -> Iterator[Feed]:
    """The prefill of ``tokens[:, :m]`` and ``steps`` single-token decode feeds over FP32 pasts (see module doc)."""
    length = tokens.shape[1]
    steps = min(steps, length - 1)
    prefill = length - steps
    feed = step_feed(layout, tokens[:, :prefill], 0, empty_pasts(layout, tokens.shape[0]))
    yield feed
    for position in range(prefill, length):
        pasts = presents_as_pasts(layout, run_named(session, feed))
        feed = step_feed(layout, tokens[:, position:position + 1], position, pasts)
        yield feed


def kv_calibration_source(model: onnx.ModelProto | Path, layout: KvCacheLayout, tokens: CalibrationSource,
                          specs: Sequence[InputSpec], *, steps: int = DEFAULT_DECODE_STEPS,
                          custom_op_library: str | None = None) -> CalibrationSource:
    """A source of full decoder feeds (prefill + ``steps`` decode feeds per token window) built from ``tokens``."""
    session_holder: list[ort.InferenceSession] = []

    def session() -> ort.InferenceSession:
        if not session_holder:   # built on first use: a source that is never iterated costs nothing
            session_holder.append(make_session(model, custom_op_library=custom_op_library))
        return session_holder[0]

    def raw() -> Iterator[tuple[str, Any]]:
        for index, item in enumerate(tokens):
            ids = item[layout.input_ids]
            if ids.ndim != 2 or ids.shape[1] < 2:
                raise data_error(f"token item {index}: input_ids must be [batch, tokens] with >= 2 tokens to "
                                 f"calibrate a KV-cache decoder, found shape {tuple(ids.shape)}")
            for step, feed in enumerate(expand_window(session(), layout, ids, steps)):
                yield f"token item {index} ({'prefill' if step == 0 else f'decode step {step}'})", feed

    def count() -> int | None:
        windows = tokens.num_samples
        return None if windows is None else windows * (1 + steps)

    description = f"{tokens.description}, each as a prefill + {steps} decode steps over FP32 pasts"
    return CalibrationSource(raw, specs, description=description, cap=None, one_shot=False, count=count)


def greedy_decode(session: ort.InferenceSession, layout: KvCacheLayout, prompt: np.ndarray,
                  new_tokens: int) -> np.ndarray:
    """Argmax generation from ``prompt`` [1, S]: a prefill over an empty past, then one token per step."""
    outputs = run_named(session, step_feed(layout, prompt, 0, empty_pasts(layout, prompt.shape[0])))
    generated, position = [], prompt.shape[1]
    for _ in range(new_tokens):
        token = outputs[layout.logits][:, -1].argmax(-1).astype(np.int64)[:, None]
        generated.append(token)
        outputs = run_named(session, step_feed(layout, token, position, presents_as_pasts(layout, outputs)))
        position += 1
    return np.concatenate(generated, axis=1)
