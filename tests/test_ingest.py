"""Ingest's duplicate detection over any uid form a pool brings."""

from __future__ import annotations

import pyarrow as pa

from curate.stages.ingest import _SeenUids


def test_seen_uids_accepts_any_uid_form():
    seen = _SeenUids()
    first = seen.add_new(pa.array(["a" * 32, "b" * 32, "a" * 32]))
    assert first.tolist() == [True, True, False]
    # 32 characters but not hex, short ids, repeats across calls
    again = seen.add_new(pa.array(["x" * 32, "img-0001", "a" * 32, "img-0001"]))
    assert again.tolist() == [True, True, False, False]
