"""Scores from a chain of linear layers on L2-normalised embeddings (pure NumPy).

LAION normalises CLIP image embeddings to unit length before its aesthetic head
(``image_features /= image_features.norm(dim=-1, keepdim=True)`` in LAION-AI/
aesthetic-predictor), so an embedding stored unnormalised (DataComp's, open_clip's raw
output) scores the same as its normalised form.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("none", "relu")


def head_scores(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]],
                activation: str = "none", sigmoid: bool = False,
                normalise: bool = True) -> np.ndarray:
    """One float32 score per row of ``x`` (n, d): ``x̂ W1ᵀ + b1``, then ``act``, ..., last
    layer without activation; ``sigmoid`` maps the result to (0, 1) (heads trained with a
    logistic loss output logits)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    h = np.asarray(x, np.float32)
    if normalise:
        norms = np.linalg.norm(h, axis=1, keepdims=True)
        h = h / np.where(norms == 0, 1, norms)
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1 and activation == "relu":
            h = np.maximum(h, 0)
    out = h[:, 0]
    if sigmoid:
        out = 1 / (1 + np.exp(-out))
    return out.astype(np.float32)
