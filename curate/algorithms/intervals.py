"""Confidence intervals for proportions: the one Wilson score interval that the audit
(false-drop rates), the pilot (survival per stage) and the pilot's per-entry survival all
report, so the three agree to the last digit."""

from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson_arrays(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of k / n, elementwise ((0, 1) where n = 0).

    Wilson (1927): centre (p + z²/2n) / (1 + z²/n), half-width
    z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n); unlike the normal interval it stays inside
    [0, 1] and is not empty at k = 0 or k = n, which pilots of a few hundred pairs hit."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    nn = np.maximum(n, 1)
    p = k / nn
    den = 1 + z * z / nn
    mid = (p + z * z / (2 * nn)) / den
    half = z * np.sqrt(p * (1 - p) / nn + z * z / (4 * nn * nn)) / den
    return (np.where(n > 0, np.maximum(0.0, mid - half), 0.0),
            np.where(n > 0, np.minimum(1.0, mid + half), 1.0))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of one proportion k / n (95% by default)."""
    lo, hi = wilson_arrays(k, n, z)
    return float(lo), float(hi)
