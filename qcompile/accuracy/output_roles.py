"""What a model output is, so that fidelity measures it with the metric its task uses.

The role of a float output y (the FP32 array, first item seen) is decided by these rules, in order:

1. its name says it is a representation (embedding, hidden, feature, pooled, state, encoding) → EMBEDDING;
2. its last axis holds probabilities (y ∈ [0, 1], Σ_c y[..., c] = 1 ± 1e-3) → class scores;
3. its name says it is class scores (logit, score, prob, softmax, class, pred) → class scores;
4. rank 2 whose rows all have unit L2 norm (|‖y_b‖ − 1| ≤ 1e-3) → EMBEDDING (normalised sentence/face vectors);
5. otherwise: rank 2 with C > 1 columns → LOGITS (the rule fidelity always had), anything else → TENSOR.

Class scores of rank 2 [B, C] are LOGITS; of rank 3 [B, T, C] (or time-major [T, B, C]) a SEQUENCE, scored
by per-step argmax agreement: mean over every (b, t) of [argmax_c y = argmax_c ŷ] — for CTC recognisers and
token classifiers the agreement of the decoded paths.  EMBEDDING and TENSOR outputs get cosine/SQNR only:
argmax of an embedding means nothing, so no top-1 is reported for it.
"""

from __future__ import annotations

import enum
import re

import numpy as np

PROBABILITY_TOLERANCE = 1e-3
UNIT_NORM_TOLERANCE = 1e-3
_EMBEDDING_NAME = re.compile(r"embed|hidden|feature|pool|state|encod", re.IGNORECASE)
_SCORES_NAME = re.compile(r"logit|score|prob|softmax|class|pred", re.IGNORECASE)


class OutputRole(enum.Enum):
    LOGITS = "logits"            # [B, C]: top-1 agreement
    SEQUENCE = "sequence"        # [B, T, C]: per-step argmax agreement
    EMBEDDING = "embedding"      # cosine only
    TENSOR = "tensor"            # anything else: cosine, SQNR

    @property
    def has_argmax(self) -> bool:
        return self in (OutputRole.LOGITS, OutputRole.SEQUENCE)


def _is_probability(y: np.ndarray) -> bool:
    if y.shape[-1] < 2 or y.min() < 0.0 or y.max() > 1.0:
        return False
    return bool(np.all(np.abs(y.sum(-1, dtype=np.float64) - 1.0) <= PROBABILITY_TOLERANCE))


def _class_scores_role(y: np.ndarray) -> OutputRole:
    if y.ndim == 2 and y.shape[1] > 1:
        return OutputRole.LOGITS
    if y.ndim == 3 and y.shape[2] > 1:
        return OutputRole.SEQUENCE
    return OutputRole.TENSOR


def output_role(name: str, reference: np.ndarray) -> OutputRole:
    """The role of output ``name`` from its FP32 value (rules in the module docstring)."""
    y = np.asarray(reference)
    if y.dtype.kind != "f" or y.size == 0 or y.ndim < 2:
        return OutputRole.TENSOR
    if _EMBEDDING_NAME.search(name):
        return OutputRole.EMBEDDING
    finite = bool(np.all(np.isfinite(y)))   # Inf/NaN outputs: only the shape and name rules apply
    if (finite and _is_probability(y)) or _SCORES_NAME.search(name):
        return _class_scores_role(y)
    if finite and y.ndim == 2 and np.all(np.abs(np.linalg.norm(y.astype(np.float64), axis=1) - 1.0)
                                         <= UNIT_NORM_TOLERANCE):
        return OutputRole.EMBEDDING
    return OutputRole.LOGITS if y.ndim == 2 and y.shape[1] > 1 else OutputRole.TENSOR


def argmax_agreement(reference: np.ndarray, approx: np.ndarray) -> list[bool]:
    """Per position (every index but the last axis): does the argmax over the last axis agree?"""
    return (reference.argmax(-1) == approx.argmax(-1)).reshape(-1).tolist()
