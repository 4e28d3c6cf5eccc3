"""Ingest's duplicate detection on workers (``_pool_dedup``) against an in-test oracle.

The oracle is the rule itself: walk the pool's rows in processing order (files sorted, runs
in order, rows in file order), keep a row when its uid is not in a Python set of the uids
kept so far, and cut each file's kept rows into shards of ``shard_size``, numbered on from
the previous file's. Ingest must produce exactly those shards: same names, same rows, same
order, whether the work runs in-process (no Ray) or on Ray workers, and after a crash at
any step followed by a rerun.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_pool_uids import ODD_UIDS

import curate.stages._pool_read as pool_read
import curate.stages.ingest as ingest_mod
from curate.config import PoolConfig
from curate.core.faults import InjectedFault
from curate.core.rundir import RunDir
from curate.errors import FailedShardsError, InputError
from curate.stages.ingest import ingest


def derived(url: str | None, caption: str) -> str:
    return hashlib.sha256(f"{url or ''}\n{caption}".encode()).hexdigest()[:32]


def oracle(tables: list[pa.Table], size: int) -> list[list[dict]]:
    """Shards (lists of rows) the rule gives for ``tables`` in processing order."""
    seen: set[str] = set()
    shards: list[list[dict]] = []
    for t in tables:
        kept = []
        for r in t.to_pylist():
            uid = r["uid"] if "uid" in r else derived(r.get("url"), r["caption"])
            if uid not in seen:
                seen.add(uid)
                kept.append(dict(r, uid=uid))
        shards += [kept[i:i + size] for i in range(0, len(kept), size)]
    return shards


def pool_shards(rd: RunDir) -> list[list[dict]]:
    names = rd.pool_shards()
    assert names == [f"part-{i:05d}.parquet" for i in range(len(names))]
    return [rd.read("pool", s).to_pylist() for s in names]


def table(ids: list[int], uids: list[str] | None = None) -> pa.Table:
    """Rows named by ``ids``: the same id is the same pair (url, caption); ``n`` its place."""
    cols: dict = {"url": [f"http://img.example.com/{i}.jpg" for i in ids],
                  "caption": [f"caption {i}" for i in ids], "n": list(range(len(ids)))}
    if uids is not None:
        cols = {"uid": uids, **cols}
    return pa.table(cols)


def put(folder, name: str, t: pa.Table, row_group_size: int | None = None) -> pa.Table:
    folder.mkdir(exist_ok=True)
    pq.write_table(t, str(folder / name), row_group_size=row_group_size)
    return t


def run(tmp_path, pool, name: str = "run", **pool_cfg) -> tuple[RunDir, dict]:
    rd = RunDir(str(tmp_path / name))
    manifest = rd.load_manifest()
    ingest(rd, str(pool), PoolConfig(**pool_cfg), manifest, save=rd.save_manifest)
    return rd, manifest


def counts(m: dict) -> dict:
    p = m["pool"]
    return {k: p[k] for k in ("rows", "rows_read", "duplicates", "bad_rows", "shards")} | {
        "inputs": [(i["path"].rsplit("/", 1)[-1], i["rows"], i["shards"]) for i in p["inputs"]]}


@pytest.fixture
def small_groups(monkeypatch):
    """Several keys/write groups and few partitions even for small pools."""
    monkeypatch.setattr(ingest_mod, "GROUP_ROWS", 5)
    monkeypatch.setattr(ingest_mod, "PARTITIONS", 3)
    monkeypatch.setattr(pool_read, "PIECE_ROWS", 4)  # files of several read pieces


def test_within_and_across_files_equals_the_oracle(tmp_path, small_groups):
    d = tmp_path / "pool"
    a = put(d, "a.parquet", table([0, 1, 2, 1, 3, 0, 4, 5, 6, 2, 7]), row_group_size=3)
    b = put(d, "b.parquet", table([7, 8, 0, 9, 9, 10, 11, 12]))
    c = put(d, "c.parquet", table([1, 2, 3]))  # nothing new: no shard
    e = put(d, "e.parquet", table([13, 5, 14]))
    rd, m = run(tmp_path, d, shard_size=3)
    assert pool_shards(rd) == oracle([a, b, c, e], 3)
    p = m["pool"]
    assert p["duplicates"] == 3 + 3 + 3 + 1 and p["rows"] == 15 and p["rows_read"] == 25
    assert [i["rows"] for i in p["inputs"]] == [8, 5, 0, 2]
    assert [i["shards"] for i in p["inputs"]] == [
        ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"],
        ["part-00003.parquet", "part-00004.parquet"], [], ["part-00005.parquet"]]
    assert p["dedup"]["partitions"] == 3 and p["dedup"]["batches"] == 1
    assert set(p["dedup"]["seconds"]) == {"read", "keys", "dedup", "write"}
    assert "pending" not in p
    assert not (tmp_path / "run" / "pool" / "_staging").exists()
    assert not (tmp_path / "run" / "pool" / "_dedup").exists()
    # what the run recorded is what run.json holds
    assert json.loads((tmp_path / "run" / "run.json").read_text())["pool"]["rows"] == 15


def test_across_incremental_runs(tmp_path, small_groups):
    d = tmp_path / "pool"
    a = put(d, "a.parquet", table(list(range(10)) + [3]))
    rd, m = run(tmp_path, d, shard_size=4)
    assert m["pool"]["duplicates"] == 1
    # a file added later holding uids of the first (and new ones, and repeats of its own)
    b = put(d, "b.parquet", table([9, 10, 0, 11, 10, 5, 12]))
    rd, m = run(tmp_path, d, shard_size=4)
    assert pool_shards(rd) == oracle([a, b], 4)
    assert m["pool"]["duplicates"] == 1 + 4 and m["pool"]["dedup"]["batches"] == 2
    # shards of the first run were not rewritten
    assert [i["shards"] for i in m["pool"]["inputs"]][1] == ["part-00003.parquet"]
    # a third run with nothing new changes nothing
    before = counts(m)
    rd, m = run(tmp_path, d, shard_size=4)
    assert counts(m) == before and m["pool"]["dedup"]["batches"] == 2


def test_across_batches_of_one_big_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "GROUP_ROWS", 50_000)
    rng = np.random.default_rng(0)
    n = 150_000  # read in batches of 65,536 rows
    ids = np.arange(n)
    dup = rng.random(n) < 0.1
    dup[:1000] = False
    ids[dup] = (rng.random(int(dup.sum())) * np.flatnonzero(dup)).astype(int)
    ids[-5:] = [0, 1, 65_535, 65_536, 140_000]  # repeats of rows in the first batches
    d = tmp_path / "pool"
    a = put(d, "a.parquet", table(ids.tolist()))
    rd, m = run(tmp_path, d, shard_size=40_000)
    expect = oracle([a], 40_000)
    got = pool_shards(rd)
    assert [len(s) for s in got] == [len(s) for s in expect]
    assert got == expect
    assert m["pool"]["duplicates"] == n - len(set(ids.tolist()))


@pytest.mark.parametrize("shard_size", [2, 1000])
def test_every_uid_shape(tmp_path, small_groups, shard_size):
    d = tmp_path / "pool"
    n = len(ODD_UIDS)
    a = put(d, "a.parquet", table(list(range(n)) + list(range(n))[::3],
                                  ODD_UIDS + ODD_UIDS[::3]))
    b = put(d, "b.parquet", table(list(range(n))[::-2], ODD_UIDS[::-2]))
    rd, m = run(tmp_path, d, shard_size=shard_size)
    got = pool_shards(rd)
    assert got == oracle([a, b], shard_size)
    assert [r["uid"] for s in got for r in s] == ODD_UIDS
    assert m["pool"]["duplicates"] == len(ODD_UIDS[::3]) + len(ODD_UIDS[::-2])


def test_random_pools_equal_the_oracle(tmp_path, monkeypatch):
    for seed in range(12):
        rng = np.random.default_rng(seed)
        monkeypatch.setattr(ingest_mod, "GROUP_ROWS", int(rng.choice([1, 7, 100, 1 << 20])))
        monkeypatch.setattr(ingest_mod, "PARTITIONS", int(rng.choice([1, 4, 64])))
        size = int(rng.choice([1, 3, 10, 1000]))
        d = tmp_path / f"pool{seed}"
        universe = int(rng.integers(5, 120))
        own = bool(seed % 2)
        done: list[pa.Table] = []
        for step in range(2):
            for f in range(int(rng.integers(1, 4))):
                ids = rng.integers(0, universe, int(rng.integers(0, 80))).tolist()
                uids = [f"{i:032x}" if i % 3 else f"u/{i}" for i in ids] if own else None
                done.append(put(d, f"s{step}-{f}.parquet", table(ids, uids),
                                row_group_size=int(rng.integers(1, 50))))
            if all(t.num_rows == 0 for t in done):
                break
            rd, m = run(tmp_path, d, name=f"run{seed}", shard_size=size)
            assert pool_shards(rd) == oracle(done, size), seed


def test_drop_duplicates_false_keeps_every_row(tmp_path):
    d = tmp_path / "pool"
    a = put(d, "a.parquet", table([0, 1, 0, 2]))
    b = put(d, "b.parquet", table([1, 3]))
    rd, m = run(tmp_path, d, shard_size=3, drop_duplicates=False)
    rows = [r for s in pool_shards(rd) for r in s]
    assert [r["n"] for r in rows] == [0, 1, 2, 3, 0, 1]
    assert m["pool"]["duplicates"] == 0 and m["pool"]["rows"] == 6
    assert "dedup" not in m["pool"] and not (tmp_path / "run" / "pool" / "_keys").exists()
    assert [i["rows"] for i in m["pool"]["inputs"]] == [a.num_rows, b.num_rows]


def test_shards_of_an_older_ingest_are_keyed_when_duplicates_are_dropped(tmp_path):
    """A run directory whose shards never went through the key store (an older curate, or
    ``drop_duplicates: false``): a later file's repeats of their uids are still dropped."""
    d = tmp_path / "pool"
    a = put(d, "a.parquet", table([0, 1, 2, 3]))
    run(tmp_path, d, shard_size=3, drop_duplicates=False)
    b = put(d, "b.parquet", table([4, 2, 5, 0, 4]))
    rd, m = run(tmp_path, d, shard_size=3)
    assert pool_shards(rd) == oracle([a, b], 3)
    assert m["pool"]["duplicates"] == 3
    assert all(i.get("keyed") for i in m["pool"]["inputs"])
    c = put(d, "c.parquet", table([1, 5, 6]))
    rd, m = run(tmp_path, d, shard_size=3)
    assert pool_shards(rd) == oracle([a, b, c], 3) and m["pool"]["duplicates"] == 5


def _uninterrupted(tmp_path, d, size):
    rd, m = run(tmp_path, d, name="clean", shard_size=size)
    return pool_shards(rd), counts(m)


@pytest.fixture
def in_process(monkeypatch):
    """The steps run in this process even when the session's Ray is up (the crash tests
    expect the injected fault itself, not the engine's retries)."""
    from curate.stages import _pool_dedup

    monkeypatch.setattr(_pool_dedup, "_ray_running", lambda: False)


def _pool_for_crashes(tmp_path):
    d = tmp_path / "pool"
    tables = [put(d, "a.parquet", table([0, 1, 2, 1, 3, 4, 5, 0])),
              put(d, "b.parquet", table([6, 5, 7, 8, 2, 9])),
              put(d, "c.parquet", table([9, 10, 11, 12, 13, 1]))]
    return d, tables


def test_crash_between_keys_and_partitions_then_rerun(tmp_path, small_groups, monkeypatch,
                                                      in_process):
    d, tables = _pool_for_crashes(tmp_path)
    clean, clean_counts = _uninterrupted(tmp_path, d, 2)

    def crash(batch, j):
        raise RuntimeError("killed")

    monkeypatch.setattr(ingest_mod, "dedup_partition", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, d, shard_size=2)
    rd = RunDir(str(tmp_path / "run"))
    pending = rd.load_manifest()["pool"]["pending"]
    assert [f["path"].rsplit("/", 1)[-1] for f in pending["files"]] == [
        "a.parquet", "b.parquet", "c.parquet"]
    assert (tmp_path / "run" / "pool" / "_dedup" / "keys-00000.bin").exists()
    assert rd.pool_shards() == []  # nothing final before the batch is done
    monkeypatch.undo()
    monkeypatch.setattr(ingest_mod, "GROUP_ROWS", 5)
    monkeypatch.setattr(ingest_mod, "PARTITIONS", 3)
    rd, m = run(tmp_path, d, shard_size=2)
    assert pool_shards(rd) == clean == oracle(tables, 2)
    assert counts(m) == clean_counts and "pending" not in m["pool"]


@pytest.mark.parametrize("fault", [
    "ingest:part-00004.parquet:raise:after",  # staging the second file
    "ingest.keys:1:raise",
    "ingest.dedup:2:raise",
    "ingest.write:part-00003.parquet:raise:after",  # some final shards written
    "ingest.dedup:commit:raise",  # every shard written, run.json not yet updated
])
def test_crash_at_any_step_then_rerun_equals_uninterrupted(tmp_path, small_groups, in_process,
                                                           monkeypatch, fault):
    d, tables = _pool_for_crashes(tmp_path)
    clean, clean_counts = _uninterrupted(tmp_path, d, 2)
    monkeypatch.setenv("CURATE_FAULT", fault)
    with pytest.raises(InjectedFault):
        run(tmp_path, d, shard_size=2)
    monkeypatch.delenv("CURATE_FAULT")
    rd, m = run(tmp_path, d, shard_size=2)
    assert pool_shards(rd) == clean == oracle(tables, 2)
    assert counts(m) == clean_counts
    assert "pending" not in m["pool"] and not (tmp_path / "run" / "pool" / "_staging").exists()


def test_on_ray_workers_equals_the_oracle_and_resumes(tmp_path, small_groups, monkeypatch,
                                                      ray_session):
    d, tables = _pool_for_crashes(tmp_path)
    more = put(d, "d.parquet", table(list(range(14, 40)) + [3, 20]))
    rd, m = run(tmp_path, d, name="clean", shard_size=2)
    clean = pool_shards(rd)
    assert clean == oracle([*tables, more], 2)
    # a partition task that fails every attempt: the batch stays pending (exit 3) ...
    monkeypatch.setenv("CURATE_FAULT", "ingest.dedup:1:raise")
    with pytest.raises(FailedShardsError, match=r"ingest.dedup: 1 of 3 tasks failed"):
        run(tmp_path, d, shard_size=2)
    assert RunDir(str(tmp_path / "run")).load_manifest()["pool"]["pending"]
    # ... and the next run finishes it
    monkeypatch.delenv("CURATE_FAULT")
    rd, m2 = run(tmp_path, d, shard_size=2)
    assert pool_shards(rd) == clean and counts(m2) == counts(m)


def _with_bad_rows(d) -> tuple[pa.Table, list[int]]:
    """A file of 3-row row groups (several read pieces) with null captions in places."""
    ids = [0, 1, 2, 3, 1, 4, 5, 6, 7, 8, 2, 9, 10, 11, 12, 13, 14]
    bad = [2, 7, 8, 15]
    t = table(ids)
    caps = [None if i in bad else c for i, c in enumerate(t["caption"].to_pylist())]
    t = t.set_column(t.column_names.index("caption"), "caption", pa.array(caps, pa.string()))
    return put(d, "a.parquet", t, row_group_size=3), bad


@pytest.mark.parametrize("where", ["in_process", "ray"])
def test_bad_rows_across_read_pieces(tmp_path, small_groups, request, where):
    """Dropped bad rows leave short staged chunks; the final shards are still the file's
    good rows cut in shard_size. Under on_bad_row=error the error names the first bad row
    of the pool, whichever piece finishes first."""
    request.getfixturevalue("in_process" if where == "in_process" else "ray_session")
    d = tmp_path / "pool"
    t, bad = _with_bad_rows(d)
    good = t.filter(pa.array([i not in bad for i in range(t.num_rows)]))
    rd, m = run(tmp_path, d, name="drop", shard_size=4, on_bad_row="drop")
    assert pool_shards(rd) == oracle([good], 4)
    assert m["pool"]["bad_rows"] == {"caption_null": 4} and m["pool"]["rows_read"] == 17
    # the later bad rows' pieces may finish first: the error is still row 2's
    put(d, "b.parquet", table([20, 21]))
    with pytest.raises(InputError, match=r"a\.parquet: row 2: caption is null"):
        run(tmp_path, d, name="error", shard_size=4)
