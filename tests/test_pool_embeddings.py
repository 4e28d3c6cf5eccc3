"""Ingest's checks of the rows a pool brings: embeddings (type, dimension, finiteness) and
the reason codes bad rows are counted under (``pool.bad_rows`` in run.json)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import POOL_URL as URL
from helpers import ingest_into as run
from helpers import pool_table as shards
from helpers import write_columns as write

from curate.config import PoolConfig
from curate.errors import InputError
from curate.stages.ingest import ingest


def fails(tmp_path, spec, *needles: str, **pool) -> str:
    with pytest.raises(InputError) as err:
        run(tmp_path, spec, **pool)
    msg = str(err.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def emb(rows: list, typ=pa.float32()) -> pa.Array:
    return pa.array(rows, pa.list_(typ))


# ------------------------------------------------------------------ ragged, null, non-finite


def test_ragged_row_is_an_error_naming_file_row_and_column(tmp_path):
    vecs = [[0.5] * 8 for _ in range(20)]
    vecs[17] = [0.5] * 7
    p = write(tmp_path / "x.parquet", image_emb=emb(vecs))
    msg = fails(tmp_path, p, "x.parquet", "row 17:", "image_emb has 7 values, expected 8",
                "pool.on_bad_row=drop")
    assert msg.startswith(f"pool {p}: row 17: ")


def test_ragged_rows_dropped_and_counted(tmp_path):
    vecs = [[float(i)] * 8 for i in range(10)]
    vecs[3], vecs[6] = [1.0] * 9, []
    p = write(tmp_path / "x.parquet", text_emb=emb(vecs))
    rd, m = run(tmp_path, p, on_bad_row="drop")
    assert m["pool"]["bad_rows"] == {"embedding_wrong_dim": 2}
    assert m["pool"]["embedding_dims"] == {"text_emb": 8}
    t = shards(rd)
    assert t.num_rows == 8 and sorted(t["caption"].to_pylist()) == sorted(
        f"caption {i}" for i in range(10) if i not in (3, 6))


def test_dimension_is_that_of_most_rows_not_a_broken_first_one(tmp_path):
    vecs = [[1.0] * 4] + [[1.0] * 8] * 9
    p = write(tmp_path / "x.parquet", image_emb=emb(vecs))
    fails(tmp_path, p, "row 0:", "image_emb has 4 values, expected 8")
    _, m = run(tmp_path, p, on_bad_row="drop")
    assert m["pool"]["bad_rows"] == {"embedding_wrong_dim": 1}
    assert m["pool"]["embedding_dims"] == {"image_emb": 8}


def test_row_numbers_count_across_batches_and_row_groups(tmp_path):
    n = 70_000
    flat = np.ones(n * 4, np.float32)
    flat[(66_000 * 4) + 2] = np.nan
    col = pa.FixedSizeListArray.from_arrays(pa.array(flat), 4)
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"caption": [f"c{i}" for i in range(n)], "image_emb": col}), p,
                   row_group_size=30_000)
    fails(tmp_path, p, "row 66000:", "image_emb has a non-finite value (nan) at index 2")


@pytest.mark.parametrize("bad,shown", [(float("nan"), "nan"), (float("inf"), "inf"),
                                       (float("-inf"), "-inf")])
def test_non_finite_values(tmp_path, bad, shown):
    vecs = [[0.0, 1.0, 2.0] for _ in range(5)]
    vecs[2][1] = bad
    p = write(tmp_path / "x.parquet", image_emb=emb(vecs))
    fails(tmp_path, p, "row 2:", f"image_emb has a non-finite value ({shown}) at index 1")
    rd, m = run(tmp_path, p, on_bad_row="drop")
    assert m["pool"]["bad_rows"] == {"embedding_not_finite": 1}
    assert shards(rd).num_rows == 4


def test_null_value_inside_an_embedding_is_not_finite(tmp_path):
    p = write(tmp_path / "x.parquet", image_emb=emb([[1.0, 2.0], [1.0, None]]))
    fails(tmp_path, p, "row 1:", "image_emb has a non-finite value (None) at index 1")


def test_float16_nan_found(tmp_path):
    p = write(tmp_path / "x.parquet",
              image_emb=emb([np.array([1, 2], np.float16), np.array([1, np.nan], np.float16)],
                            pa.float16()))
    fails(tmp_path, p, "row 1:", "non-finite value (nan)")


def test_null_embedding(tmp_path):
    p = write(tmp_path / "x.parquet", text_emb=emb([[1.0, 2.0], None, [3.0, 4.0]]))
    fails(tmp_path, p, "row 1:", "text_emb is null")
    rd, m = run(tmp_path, p, on_bad_row="drop")
    assert m["pool"]["bad_rows"] == {"embedding_null": 1}
    assert shards(rd)["text_emb"].to_pylist() == [[1.0, 2.0], [3.0, 4.0]]


def test_null_row_backed_by_values_is_not_misread():
    """A null list entry may still own slots in the values buffer (here NaNs): the row is
    null, and the rows after it are not blamed for its slots. (Checked in memory: a
    Parquet round trip would drop the slots.)"""
    from curate.stages.pool_checks import EmbeddingDims, check_rows

    values = pa.array([1.0, 2.0, np.nan, np.nan, 5.0, 6.0, 7.0, np.inf], pa.float32())
    col = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6, 8], pa.int32()), values,
                                   mask=pa.array([False, True, False, False]))
    table = pa.table({"caption": ["a", "b", "c", "d"], "image_emb": col})
    good, counts = check_rows(table, PoolConfig(on_bad_row="drop"), "m", 0, EmbeddingDims())
    assert good.tolist() == [True, False, True, False]
    assert counts == {"embedding_null": 1, "embedding_not_finite": 1}
    # and a slice of it (a batch within a bigger array)
    good, counts = check_rows(table.slice(1), PoolConfig(on_bad_row="drop"), "m", 1,
                              EmbeddingDims())
    assert good.tolist() == [False, True, False]


def test_each_row_counted_once_under_its_first_problem(tmp_path):
    p = write(tmp_path / "x.parquet",
              caption=["a", None, "c", "d"],
              image_emb=emb([[1.0, 2.0], None, [1.0], [np.nan, 1.0]]),
              text_emb=emb([[1.0, 2.0], [1.0], None, None]))
    rd, m = run(tmp_path, p, on_bad_row="drop")
    # row 1: caption null (also image_emb null); row 2: text_emb null before image_emb's
    # wrong dimension; row 3: text_emb null before image_emb's NaN
    assert m["pool"]["bad_rows"] == {"caption_null": 1, "embedding_null": 2}
    assert shards(rd).num_rows == 1
    fails(tmp_path, p, "row 1:", "caption is null")


# ------------------------------------------------------------------ types


@pytest.mark.parametrize("mode", ["error", "drop"])
@pytest.mark.parametrize("col", [pa.array(["0.1,0.2", "0.3,0.4"]),
                                 pa.array([["a", "b"], ["c", "d"]]),
                                 pa.array([1.0, 2.0]),
                                 pa.array([b"\x00\x01", b"\x02\x03"])])
def test_wrong_embedding_type_is_an_error_even_in_drop_mode(tmp_path, mode, col):
    p = write(tmp_path / "x.parquet", image_emb=col)
    fails(tmp_path, p, "x.parquet", "image_emb column has type", "expected a list of floats",
          on_bad_row=mode)


@pytest.mark.parametrize("typ,kind", [(pa.int8(), pa.list_), (pa.int64(), pa.large_list)])
def test_integer_embeddings_accepted_as_float32(tmp_path, typ, kind):
    rows = [[1, -2, 3], [4, 5, -6]]
    p = write(tmp_path / "x.parquet", image_emb=pa.array(rows, kind(typ)))
    rd, m = run(tmp_path, p)
    col = shards(rd)["image_emb"]
    assert col.type == kind(pa.float32())
    assert col.to_pylist() == [[float(v) for v in r] for r in rows]
    assert m["pool"]["embedding_dims"] == {"image_emb": 3}


def test_integer_fixed_size_list_becomes_fixed_size_float32(tmp_path):
    col = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.int16)), 3)
    p = write(tmp_path / "x.parquet", text_emb=col)
    rd, _ = run(tmp_path, p)
    assert shards(rd)["text_emb"].type == pa.list_(pa.float32(), 3)


def test_fixed_size_list_accepted(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)
    p = write(tmp_path / "x.parquet", image_emb=col, text_emb=col)
    rd, m = run(tmp_path, p)
    t = shards(rd)
    assert t["image_emb"].type == pa.list_(pa.float32(), 16)
    assert np.array_equal(np.array(t["image_emb"].to_pylist(), np.float32), x)
    assert m["pool"]["embedding_dims"] == {"image_emb": 16, "text_emb": 16}


# ------------------------------------------------------------------ one dimension per pool


def test_dimension_mismatch_between_two_files(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    write(d / "a.parquet", image_emb=emb([[1.0] * 64] * 3))
    write(d / "b.parquet", image_emb=emb([[1.0] * 32] * 3),
          url=[f"{URL}?b{i}" for i in range(3)])
    msg = fails(tmp_path, d, "b.parquet", "row 0:", "image_emb has 32 values, expected 64",
                "a.parquet")
    assert msg.startswith(f"pool {d / 'b.parquet'}: ")
    rd, m = run(tmp_path, d, on_bad_row="drop")
    assert m["pool"]["bad_rows"] == {"embedding_wrong_dim": 3}
    assert m["pool"]["rows"] == 3


def test_fixed_size_type_of_another_dimension_is_an_error_even_in_drop_mode(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    for name, dim in (("a", 8), ("b", 4)):
        col = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(2 * dim, np.float32)), dim)
        write(d / f"{name}.parquet", image_emb=col, url=[f"{URL}?{name}{i}" for i in range(2)])
    fails(tmp_path, d, "b.parquet", "4 values a row", "dimension is 8", on_bad_row="drop")


def test_files_added_later_are_held_to_the_recorded_dimension(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    write(d / "a.parquet", image_emb=emb([[1.0] * 8] * 2))
    rd, m = run(tmp_path, d)
    assert m["pool"]["embedding_dims"] == {"image_emb": 8}
    write(d / "b.parquet", image_emb=emb([[1.0] * 6] * 2), url=[f"{URL}?b{i}" for i in range(2)])
    with pytest.raises(InputError, match="row 0: image_emb has 6 values, expected 8 .*run.json"):
        ingest(rd, str(d), PoolConfig(), m)


# ------------------------------------------------------------------ good pools untouched


def test_valid_64d_pool_passes_bit_identical(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    x[0, 0] = np.float32(-0.0)
    x[1, 1] = np.finfo(np.float32).tiny / 4  # subnormal
    y = rng.normal(size=(300, 64))  # float64
    p = write(tmp_path / "x.parquet",
              image_emb=pa.ListArray.from_arrays(pa.array(np.arange(0, 301 * 64, 64,
                                                                    dtype=np.int32)),
                                                 pa.array(x.reshape(-1))),
              text_emb=pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), 64))
    rd, m = run(tmp_path, p, shard_size=128)
    assert m["pool"]["bad_rows"] == {} and m["pool"]["rows"] == 300
    assert m["pool"]["embedding_dims"] == {"image_emb": 64, "text_emb": 64}
    t = shards(rd)
    assert t["image_emb"].type == pa.list_(pa.float32())
    assert t["text_emb"].type == pa.list_(pa.float64(), 64)
    got = np.concatenate([c.flatten().to_numpy() for c in t["image_emb"].chunks])
    assert got.tobytes() == x.tobytes()
    got = np.concatenate([c.flatten().to_numpy() for c in t["text_emb"].chunks])
    assert got.tobytes() == y.tobytes()


def test_two_million_rows_validate_in_seconds(tmp_path):
    from curate.stages.pool_checks import EmbeddingDims, check_rows

    n, d = 2_000_000, 64
    x = np.random.default_rng(2).random((n, d), dtype=np.float32)
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    table = pa.table({"url": pa.repeat(URL, n), "caption": pa.repeat("a photo", n),
                      "image_emb": pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)))})
    t0 = time.perf_counter()
    good, counts = check_rows(table, PoolConfig(), "big.parquet", 0, EmbeddingDims())
    took = time.perf_counter() - t0
    assert good.all() and counts == {}
    assert took < 10, took


# ------------------------------------------------------------------ caption and url codes

CODE_CASES = [
    ("caption_null", dict(caption=["ok", None]), "caption is null"),
    ("caption_empty", dict(caption=["ok", " \t"]), "caption is empty"),
    ("caption_too_long", dict(caption=["ok", "x" * 101]), "caption longer than 100 bytes"),
    ("caption_nul_char", dict(caption=["ok", "a\x00b"]), "NUL character"),
    ("url_null", dict(url=[URL, None]), "url is null"),
    ("url_not_http", dict(url=[URL, "ftp://example.com/x"]), "url is not http(s)"),
]


@pytest.mark.parametrize("code,cols,message", CODE_CASES, ids=[c[0] for c in CODE_CASES])
def test_bad_row_codes(tmp_path, code, cols, message):
    p = write(tmp_path / "x.parquet", **cols)
    fails(tmp_path, p, "row 1:", message, max_caption_bytes=100)
    rd, m = run(tmp_path, p, on_bad_row="drop", max_caption_bytes=100)
    assert m["pool"]["bad_rows"] == {code: 1}
    assert m["pool"]["rows"] == 1 and shards(rd).num_rows == 1


def test_codes_add_up_across_files_and_duplicates_counted_apart(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    write(d / "a.parquet", caption=["x", None, "y", "x"], url=[URL, URL, "nope", URL])
    write(d / "b.parquet", caption=[None, "z"], url=[URL, URL + "?z"])
    _, m = run(tmp_path, d, on_bad_row="drop")
    assert m["pool"]["bad_rows"] == {"caption_null": 2, "url_not_http": 1}
    assert m["pool"]["duplicates"] == 1
    assert m["pool"]["rows"] == 2


def test_first_bad_row_reported_not_first_problem_kind(tmp_path):
    p = write(tmp_path / "x.parquet", caption=["a", "b", None], url=[URL, "nope", URL])
    fails(tmp_path, p, "row 1:", "url is not http(s) ('nope')")
