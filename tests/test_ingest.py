"""Ingest's duplicate keys over any uid form a pool brings."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from curate.stages._pool_dedup import uid_keys128


def _keys(uids: list[str]) -> list[tuple[int, int]]:
    hi, lo = uid_keys128(pa.array(uids, pa.string()))
    return list(zip(hi.tolist(), lo.tolist()))


def test_uid_keys_accept_any_uid_form():
    keys = _keys(["a" * 32, "b" * 32, "a" * 32, "x" * 32, "img-0001", "A" * 32, ""])
    assert keys[0] == keys[2] and len(set(keys)) == 6
    # our own hex form is decoded, any other uid hashed (so never taken for a hex one)
    assert keys[0] == tuple(np.frombuffer(bytes.fromhex("a" * 32), "<u8").tolist())
    assert keys[4] == tuple(np.frombuffer(hashlib.sha256(b"img-0001").digest()[:16],
                                          "<u8").tolist())


def test_uid_keys_of_a_slice_and_of_chunks():
    arr = pa.array(["0123456789abcdef" * 2, "x", "fedcba9876543210" * 2, "é"])
    whole = _keys(arr.to_pylist())
    hi, lo = uid_keys128(arr.slice(2, 2))
    assert list(zip(hi.tolist(), lo.tolist())) == whole[2:]
    hi, lo = uid_keys128(pa.chunked_array([arr.slice(0, 1), arr.slice(1)]))
    assert list(zip(hi.tolist(), lo.tolist())) == whole
    hi, lo = uid_keys128(pa.chunked_array([], pa.string()))
    assert len(hi) == len(lo) == 0
