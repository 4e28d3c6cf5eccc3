"""Any uid a pool brings is legal: ingest keeps it verbatim, and duplicate detection
(``_pool_dedup``) treats two uids as one only when they are the same string, within a batch,
across batches, files and runs. Only null and empty uids are errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from helpers import POOL_URL as URL
from helpers import ingest_into as run
from helpers import pool_table as shards
from helpers import write_columns as write

from curate.config import PoolConfig
from curate.errors import InputError
from curate.stages._pool_dedup import first_of_key, uid_keys128
from curate.stages._pool_read import compute_uids
from curate.stages.ingest import ingest

ODD_UIDS = [
    "0123456789abcdef0123456789abcdef",  # our own form
    "0123456789ABCDEF0123456789ABCDEF",  # same hex digits, upper case: another uid
    "000012345", "12345", " 12345", "12345 ",
    "img-000001", "a.b.c", ".", "..", "../../etc/passwd", "a/b/c", "/abs", "C:\\x\\y",
    "画像-1", "ünïcödé", "🐕", "e\u0301", "\u00e9",  # the last two: same glyph, two strings
    "with spaces", "tab\there", "new\nline", "x" * 200, "x" * 32, "'quote\"", "%20;--",
]








@pytest.mark.parametrize("shard_size", [2, 1000])  # batches of 4 rows, or one batch
def test_odd_uids_kept_verbatim(tmp_path, shard_size):
    p = write(tmp_path / "p.parquet", uid=ODD_UIDS)
    rd, m = run(tmp_path, p, shard_size=shard_size)
    t = shards(rd)
    assert t["uid"].to_pylist() == ODD_UIDS
    assert t["caption"].to_pylist() == [f"caption {i}" for i in range(len(ODD_UIDS))]
    assert m["pool"]["rows"] == len(ODD_UIDS) and m["pool"]["duplicates"] == 0


@pytest.mark.parametrize("shard_size", [2, 1000])
def test_repeats_of_odd_uids_are_duplicates_within_a_file(tmp_path, shard_size):
    uids = ODD_UIDS + ODD_UIDS[::-1]
    pairs = list(range(len(ODD_UIDS))) * 2
    pairs[len(ODD_UIDS):] = pairs[len(ODD_UIDS) - 1::-1]
    p = write(tmp_path / "p.parquet", uid=uids, url=[f"{URL}?{i}" for i in pairs],
              caption=[f"caption {i}" for i in pairs])
    rd, m = run(tmp_path, p, shard_size=shard_size)
    assert shards(rd)["uid"].to_pylist() == ODD_UIDS
    assert m["pool"]["duplicates"] == len(ODD_UIDS)


def test_repeats_across_files_and_runs(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    write(d / "a.parquet", uid=ODD_UIDS[:10])
    write(d / "b.parquet", uid=ODD_UIDS[5:20], url=[f"{URL}?{i}" for i in range(5, 20)],
          caption=[f"caption {i}" for i in range(5, 20)])
    rd, m = run(tmp_path, d, shard_size=3)
    assert sorted(shards(rd)["uid"].to_pylist()) == sorted(ODD_UIDS[:20])
    assert m["pool"]["duplicates"] == 5
    # a file added later: repeats of uids already in the shards are dropped too
    rest = list(range(15, len(ODD_UIDS)))
    write(d / "c.parquet", uid=[ODD_UIDS[i] for i in rest],
          url=[f"{URL}?{i}" for i in rest], caption=[f"caption {i}" for i in rest])
    ingest(rd, str(d), PoolConfig(shard_size=3), m)
    assert sorted(shards(rd)["uid"].to_pylist()) == sorted(ODD_UIDS)
    assert m["pool"]["duplicates"] == 10


def _repeats(uids: list[str]) -> list[bool]:
    """Which of ``uids`` equal an earlier one, by their 128-bit keys."""
    order, first = first_of_key(*uid_keys128(pa.array(uids, pa.string())))
    out = np.empty(len(uids), bool)
    out[order] = ~first
    return out.tolist()


def test_pool_uid_equal_to_a_derived_uid_is_the_same_uid(tmp_path):
    """A pool that brings our own uid form (hex of sha256) dedups against it as a string."""
    derived = compute_uids(pa.array([URL]), pa.array(["a dog"]))[0].as_py()
    assert _repeats([derived, "img-1", derived, derived.upper()]) == [
        False, False, True, False]


def test_integer_uid_column_cast_to_strings(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    write(d / "a.parquet", uid=pa.array([12345, 7, -1, 2**62], pa.int64()))
    # the same numbers as strings in another file are the same uids; leading zeros are not
    write(d / "b.parquet", uid=["12345", "000007", "8"], url=[URL, URL + "?1", URL + "?8"],
          caption=["caption 0", "caption 1", "caption 8"])
    rd, m = run(tmp_path, d)
    t = shards(rd)
    assert t.schema.field("uid").type == pa.string()
    assert t["uid"].to_pylist() == ["12345", "7", "-1", str(2**62), "000007", "8"]
    assert m["pool"]["duplicates"] == 1


def test_large_string_uids_accepted(tmp_path):
    p = write(tmp_path / "p.parquet", uid=pa.array(["a", "b/../c"], pa.large_string()))
    rd, _ = run(tmp_path, p)
    t = shards(rd)
    assert t.schema.field("uid").type == pa.string() and t["uid"].to_pylist() == ["a", "b/../c"]


@pytest.mark.parametrize("mode", ["error", "drop"])
@pytest.mark.parametrize("value,reason", [("", "uid is an empty string"),
                                          (None, "uid is null")])
def test_empty_and_null_uids_are_errors_naming_the_row(tmp_path, mode, value, reason):
    p = write(tmp_path / "p.parquet", uid=["a", "b", value, "d"])
    with pytest.raises(InputError, match=f"p.parquet: row 2: {reason}"):
        run(tmp_path, p, on_bad_row=mode, shard_size=1)


def test_missing_uid_on_a_dropped_row_is_not_an_error(tmp_path):
    p = write(tmp_path / "p.parquet", uid=["a", None, ""], caption=["ok", None, " "])
    rd, m = run(tmp_path, p, on_bad_row="drop")
    assert shards(rd)["uid"].to_pylist() == ["a"]
    assert m["pool"]["bad_rows"] == {"caption_null": 1, "caption_empty": 1}


def test_whitespace_uid_is_a_uid(tmp_path):
    p = write(tmp_path / "p.parquet", uid=[" ", "  "])
    rd, _ = run(tmp_path, p)
    assert shards(rd)["uid"].to_pylist() == [" ", "  "]


@pytest.mark.parametrize("col", [pa.array([1.5, 2.5]), pa.array([b"\x01", b"\x02"]),
                                 pa.array([[1], [2]])])
def test_uid_column_of_another_type_is_an_error(tmp_path, col):
    p = write(tmp_path / "p.parquet", uid=col)
    with pytest.raises(InputError, match="uid column has type .*expected string or integer"):
        run(tmp_path, p)


def test_conflicting_odd_uid_names_file_rows_after_dropped_rows(tmp_path):
    p = write(tmp_path / "p.parquet", uid=["../x", "y", "../x"], caption=["a dog", None, "a cat"],
              url=[URL] * 3)
    with pytest.raises(InputError,
                       match=r"uid '\.\./x' names different pairs \(rows 0 and 2 differ"):
        run(tmp_path, p, on_bad_row="drop")


def test_repeats_match_a_python_set():
    """Mixed uids (hex and not, repeated), against the obvious implementation."""
    rng = np.random.default_rng(3)
    derived = compute_uids(None, pa.array([f"c{i}" for i in range(300)])).to_pylist()
    pool = derived + [f"{i:06d}" for i in range(300)] + [f"u/{i}/..{'é' * (i % 5)}"
                                                         for i in range(300)] + ODD_UIDS
    uids = [pool[i] for i in rng.integers(0, len(pool), 3000)]
    ref: set[str] = set()
    expect = []
    for u in uids:
        expect.append(u in ref)
        ref.add(u)
    assert _repeats(uids) == expect
