"""Embedding columns between Arrow and NumPy: one place for the conversion every stage that
reads or writes CLIP embeddings needs (score writes them, prune, the heads, decontaminate
and DataComp's image filter read them), so none imports another stage to get it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def fp16_list(x: np.ndarray) -> pa.FixedSizeListArray:
    """float32 [n, D] -> Arrow fixed_size_list<float16>[D] (half the bytes, ~1e-3 error)."""
    x16 = np.ascontiguousarray(x, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(x16.reshape(-1)), x16.shape[1])


def as_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """list or fixed_size_list column of floats -> float32 [n, D]."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, 0), np.float32)
