"""Scores from a chain of linear layers on L2-normalised embeddings (pure NumPy).

LAION normalises CLIP image embeddings to unit length before its aesthetic head
(``image_features /= image_features.norm(dim=-1, keepdim=True)`` in LAION-AI/
aesthetic-predictor), so an embedding stored unnormalised (DataComp's, open_clip's raw
output) scores the same as its normalised form; clip-retrieval does the same before LAION's
NSFW head (``normalized`` in clip_back.py: a zero norm divides by 1).

A head may start with a Keras-style normalisation layer (LAION's CLIP-based NSFW detector,
``Normalization`` in LAION-AI/CLIP-based-NSFW-Detector src/models.py): ``(x - mean) /
(sqrt(variance) + 1e-10)`` per input dimension, after the L2 normalisation and before the
first linear layer.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("none", "relu")
#: the epsilon of LAION's ``Normalization`` (added to the standard deviation, not the variance)
NORM_EPS = 1e-10


class Head(list):
    """The (weight, bias) layers of a head, in order, and its leading normalisation
    ``norm = (mean, variance)`` or None. A list, so code that reads ``layers[0][0]`` (the
    first weight) works on a head with or without one."""

    def __init__(self, layers, norm: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__(layers)
        self.norm = norm


def l2_normalised(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, a zero row left as it is (clip-retrieval's ``normalized``)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return x / norms


def head_scores(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]],
                activation: str = "none", sigmoid: bool = False,
                normalise: bool = True,
                norm: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One float32 score per row of ``x`` (n, d): ``x̂ W1ᵀ + b1``, then ``act``, ..., last
    layer without activation; ``sigmoid`` maps the result to (0, 1) (heads trained with a
    logistic loss output logits). ``norm`` (mean, variance), or the ``norm`` of a
    :class:`Head` passed as ``layers``, is applied to ``x̂`` before the first layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    h = np.asarray(x, np.float32)
    if normalise:
        h = l2_normalised(h)
    norm = norm if norm is not None else getattr(layers, "norm", None)
    if norm is not None:
        mean, variance = norm
        h = (h - mean) / (np.sqrt(variance) + np.float32(NORM_EPS))
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1 and activation == "relu":
            h = np.maximum(h, 0)
    out = h[:, 0]
    if sigmoid:
        out = 1 / (1 + np.exp(-out))
    return out.astype(np.float32)


def violent(x: np.ndarray, prompts: np.ndarray, normalise: bool = True) -> np.ndarray:
    """clip-retrieval's violence flag: per L2-normalised row, whether prompt 1 has the
    largest dot product (``np.argmax(np.einsum("ij,kj->ik", emb, prompts), axis=1) == 1``;
    ``get_violent_items`` in clip_back.py; LAION's prompts files hold two rows).
    ``normalise=False``: ``x`` is normalised already."""
    emb = np.asarray(x, np.float32)
    emb = l2_normalised(emb) if normalise else emb
    return np.argmax(np.einsum("ij,kj->ik", emb, prompts), axis=1) == 1
