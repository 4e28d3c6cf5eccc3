"""The engine's result transport: large results come back compressed and equal."""

from __future__ import annotations

import numpy as np

from curate.core import engine, packing


def _result(n: int) -> dict:
    ids = np.arange(0, 3 * n, 3, dtype=np.int32)
    return {"shard": f"part-{n:05d}.parquet", "ids": ids, "counts": (ids % 7).astype(np.int32)}


def test_pack_round_trip_only_above_the_threshold():
    small, large = _result(10), _result(200_000)
    assert packing.pack(small) is small and packing.pack(None) is None
    packed = packing.pack(large)
    assert isinstance(packed, packing._Packed) and len(packed.data) < packed.size / 2
    back = packing.unpack(packed)
    assert back["shard"] == large["shard"]
    for k in ("ids", "counts"):
        assert back[k].dtype == large[k].dtype and np.array_equal(back[k], large[k])
    assert packing.unpack(small) is small


def test_map_items_returns_large_results_whole(ray_session):
    """np.arange (importable on workers): 40 B, 1.2 MB and 2.4 MB results, all whole."""
    outcomes = engine.map_items(np.arange, [5, 150_000, 300_000], desc="test")
    assert [o.ok for o in outcomes] == [True] * 3
    for o in outcomes:
        assert isinstance(o.value, np.ndarray) and np.array_equal(o.value, np.arange(o.item))
