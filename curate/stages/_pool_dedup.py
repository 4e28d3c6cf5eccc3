"""Exact duplicate uids across a whole pool, found on Ray workers by hash partitioning.

Why: ingest used to keep every uid seen so far in a set on the driver (16 B per pair: 16 GB
for a 1B-pair pool), against the rule that the driver holds O(1) state per pair. Here the
driver holds counts per shard; each worker task holds 1/P of the keys.

The rule is unchanged: a uid that occurred earlier in the pool (in an earlier run's shards,
an earlier file in processing order or an earlier row of the same file) is a duplicate; the
first occurrence wins. Two uids are one when they are the same string; uids are compared by
their 128-bit key (``curate.algorithms.uids.uid_keys128``), which two distinct uids share
with probability ~n²/2¹²⁹, nil for any real pool.

ingest.py stages a *batch* (the new files of one ingest call) as ``pool/_staging/part-N``
chunks, rows exactly as read, then runs three steps (``batches.map_batched``; in-process when
Ray is not initialised, see :func:`run_step`):

1. ``keys``, a task per group of ~1M staged rows: records (key hi, lo, staged chunk, row),
   24 B each, sorted by partition ``mix64(hi ^ mix64(lo)) % P`` (mixed, so structured uids,
   e.g. zero-padded counters, still spread evenly) into ``pool/_dedup/keys-GGGGG.bin``.
   Shards committed before the key store knew them (a run directory of an older curate, or
   ingested with ``drop_duplicates: false``) go the same way into ``old-GGGGG.bin``.
2. ``dedup``, a task per partition j: the committed keys of j (``pool/_keys/pJJJJ/
   gen-BBBBB.bin``, one sorted file per batch so far), old keys, then j's records of every
   keys file in pool order, stable-sorted by key: a record equal to its predecessor is a
   duplicate (committed keys and earlier rows sort first). Writes the batch's new keys of j
   as ``gen-{batch}`` and the duplicates' positions to ``pool/_dedup/dups-pJJJJ.bin``;
   returns duplicates per staged chunk. Memory per task: ~pool/P keys (16 B per committed
   key, 24 B per new one, plus the sort; see ``PARTITIONS``); the driver only sums counts.
3. ``write``, a task per group: each final shard is a file's kept rows cut in
   ``shard_size``, exactly the shards an ingest that never wrote a duplicate produces. A
   staged chunk that is a final shard as it is (no duplicates, same cut) is renamed; the
   others are rewritten from the staged chunks minus their duplicates.

Files (``.bin``): an int64 count n, n+1 int64 offsets, then the records; a task reads its
range of a file with ranged reads, so the shuffle is P x groups reads, not P x shards files.

Every output is written atomically under a name fixed by the batch, and a task whose output
exists returns what it would have computed: a crash anywhere, then a rerun (which finishes
the pending batch first), gives what an uninterrupted ingest gives. Fault points:
``ingest.keys:G``, ``ingest.dedup:J``, ``ingest.write:part-N`` (after the write) and
``ingest.dedup:commit`` (on the driver, before run.json records the batch).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from curate.algorithms.uids import mix64, uid_keys128
from curate.core import faults
from curate.core.io import (
    is_local,
    shard_index,
    shard_name,
    write_bytes_atomic,
    write_parquet_atomic,
)
from curate.core.rundir import RunDir
from curate.errors import FailedShardsError

#: partitions of a run directory's keys (recorded in run.json, so later runs keep it). A
#: dedup task peaks near 70 B per key of its batch (45 per committed key): ~1.1 GB for a
#: 1B-pair pool ingested in one run (16M keys a partition), 70 MB for the next 64M pairs
PARTITIONS = 64
#: staged rows per keys/write task: few ranged reads per task, a few tens of MB of keys each
GROUP_ROWS = 1 << 20

KEY = np.dtype([("hi", "<u8"), ("lo", "<u8")])
REC = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("chunk", "<u4"), ("row", "<u4")])
POS = np.dtype([("chunk", "<u4"), ("row", "<u4")])

STAGING, WORK, KEYS = "pool/_staging", "pool/_dedup", "pool/_keys"


@dataclass(frozen=True)
class Batch:
    """What every task of one batch needs to know (small, pickled to workers)."""

    url: str  # run directory
    partitions: int
    gen: int  # the batch's number: its keys become gen-{gen}
    first: int  # number of the first staged chunk
    chunks: int  # staged chunks
    group: int  # staged chunks (or old shards) per group
    old_groups: int  # groups of old shards (keys only)

    @property
    def groups(self) -> int:
        return -(-self.chunks // self.group)


def partition_of(hi: np.ndarray, lo: np.ndarray, partitions: int) -> np.ndarray:
    return (mix64(hi ^ mix64(lo)) % np.uint64(partitions)).astype(np.int64)


def first_of_key(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stable sort of the keys (``order``) and, in that order, whether each entry is the
    first of its key: equal keys keep their input order, so the earliest entry is first.
    One sorted half at a time: a task's peak is what bounds the partition count."""
    order = np.lexsort((lo, hi))
    first = np.ones(len(order), bool)
    s = hi[order]
    first[1:] = s[1:] != s[:-1]
    s = lo[order]
    first[1:] |= s[1:] != s[:-1]
    return order, first


# ----------------------------------------------------------------------------- files
def write_ranges(rd: RunDir, path: str, records: np.ndarray, bounds: np.ndarray) -> None:
    """``records`` with the offsets ``bounds`` (range i is records[bounds[i]:bounds[i+1]])."""
    head = np.concatenate([[len(bounds) - 1], bounds]).astype("<i8")
    write_bytes_atomic(rd.fs, rd.path(path), head.tobytes() + records.tobytes())


def _bounds(rd: RunDir, path: str, i0: int, i1: int) -> tuple[int, int, int]:
    """Where ranges ``i0 .. i1 - 1`` of a ``write_ranges`` file are: (header bytes, first
    record, end record)."""
    p = rd.path(path)
    n = int(np.frombuffer(rd.fs.cat_file(p, start=0, end=8), "<i8")[0])
    b = np.frombuffer(rd.fs.cat_file(p, start=8 + 8 * i0, end=16 + 8 * i1), "<i8")
    return 8 * (n + 2), int(b[0]), int(b[-1])


def read_ranges(rd: RunDir, path: str, dtype: np.dtype, i0: int, i1: int,
                where: tuple[int, int, int] | None = None) -> np.ndarray:
    """Records of ranges ``i0 .. i1 - 1`` of a file written by :func:`write_ranges`."""
    head, a, b = where or _bounds(rd, path, i0, i1)
    if b == a:
        return np.empty(0, dtype)
    data = rd.fs.cat_file(rd.path(path), start=head + a * dtype.itemsize,
                          end=head + b * dtype.itemsize)
    return np.frombuffer(data, dtype)


def _move(rd: RunDir, src: str, dst: str) -> None:
    if is_local(rd.fs):
        os.replace(src, dst)
    else:
        rd.fs.mv(src, dst)


def keys_path(kind: str, group: int) -> str:
    return f"{WORK}/{kind}-{group:05d}.bin"


def dups_path(j: int) -> str:
    return f"{WORK}/dups-p{j:04d}.bin"


def gen_path(j: int, gen: int) -> str:
    return f"{KEYS}/p{j:04d}/gen-{gen:05d}.bin"


# ----------------------------------------------------------------------------- steps
def write_keys(batch: Batch, item: tuple[str, int, list[str]]) -> int:
    """Step 1: the key records of a group of shards (``kind`` "keys": staged chunks of the
    batch; "old": committed shards), by partition. Returns the number of records."""
    kind, group, names = item
    rd = RunDir(batch.url)
    out = keys_path(kind, group)
    faults.maybe_fail("ingest.keys", str(group))
    if rd.fs.exists(rd.path(out)):
        return -1
    folder = STAGING if kind == "keys" else "pool"
    parts = []
    for name in names:
        hi, lo = uid_keys128(rd.read(folder, name, ["uid"])["uid"])
        rec = np.empty(len(hi), REC)
        rec["hi"], rec["lo"] = hi, lo
        rec["chunk"], rec["row"] = shard_index(name), np.arange(len(hi))
        parts.append(rec)
    rec = np.concatenate(parts) if parts else np.empty(0, REC)
    part = partition_of(rec["hi"], rec["lo"], batch.partitions)
    order = np.argsort(part, kind="stable")  # pool order within each partition
    bounds = np.searchsorted(part[order], np.arange(batch.partitions + 1))
    write_ranges(rd, out, rec[order], bounds)
    return len(rec)


def _load_partition(rd: RunDir, batch: Batch, j: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Partition j's keys: committed ones, then old shards', then the batch's in pool order
    (``hi``, ``lo``), the batch's positions (``pos``), and where each kind starts. Filled
    into arrays sized first, one file at a time: 24 B per new key, 16 B per earlier one."""
    sources = ([(0, gen_path(j, g), KEY, 0) for g in range(batch.gen)
                if rd.fs.exists(rd.path(gen_path(j, g)))]
               + [(1, keys_path("old", g), REC, j) for g in range(batch.old_groups)]
               + [(2, keys_path("keys", g), REC, j) for g in range(batch.groups)])
    where = [_bounds(rd, path, i, i + 1) for _, path, _, i in sources]
    sizes = [b - a for _, a, b in where]
    n_committed = sum(n for n, src in zip(sizes, sources) if src[0] == 0)
    n_earlier = sum(n for n, src in zip(sizes, sources) if src[0] < 2)
    hi, lo = np.empty(sum(sizes), "<u8"), np.empty(sum(sizes), "<u8")
    pos = np.empty(sum(sizes) - n_earlier, POS)
    at = 0
    for (kind, path, dt, i), w, n in zip(sources, where, sizes):
        part = read_ranges(rd, path, dt, i, i + 1, w)
        hi[at:at + n], lo[at:at + n] = part["hi"], part["lo"]
        if kind == 2:
            pos["chunk"][at - n_earlier:at - n_earlier + n] = part["chunk"]
            pos["row"][at - n_earlier:at - n_earlier + n] = part["row"]
        at += n
    return hi, lo, pos, n_committed, n_earlier


def dedup_partition(batch: Batch, j: int) -> np.ndarray:
    """Step 2 for partition ``j``: returns the duplicates of partition j per staged chunk."""
    rd = RunDir(batch.url)
    faults.maybe_fail("ingest.dedup", str(j))
    if rd.fs.exists(rd.path(dups_path(j))) and rd.fs.exists(rd.path(gen_path(j, batch.gen))):
        pos = read_ranges(rd, dups_path(j), POS, 0, batch.groups)
    else:
        hi, lo, pos, n_committed, n_earlier = _load_partition(rd, batch, j)
        order, first = first_of_key(hi, lo)
        # the batch's keys of j: first of their key, not committed before (old or new)
        keep = order[first & (order >= n_committed)]
        fresh = np.empty(len(keep), KEY)
        fresh["hi"], fresh["lo"] = hi[keep], lo[keep]
        del hi, lo, keep
        write_ranges(rd, gen_path(j, batch.gen), fresh, np.array([0, len(fresh)]))
        del fresh
        is_new = order >= n_earlier
        dup = np.zeros(len(pos), bool)
        dup[order[is_new] - n_earlier] = ~first[is_new]
        del order, first, is_new
        pos = pos[dup]  # in pool order: by chunk, then row
        group_of = (pos["chunk"].astype(np.int64) - batch.first) // batch.group
        write_ranges(rd, dups_path(j), pos,
                     np.searchsorted(group_of, np.arange(batch.groups + 1)))
    return np.bincount(pos["chunk"].astype(np.int64) - batch.first, minlength=batch.chunks)


def _dups_of(rd: RunDir, batch: Batch, c0: int, c1: int) -> dict[int, np.ndarray]:
    """Rows that are duplicates, per staged chunk ``c0 .. c1``, from every partition."""
    g0, g1 = (c0 - batch.first) // batch.group, (c1 - batch.first) // batch.group
    pos = np.concatenate([read_ranges(rd, dups_path(j), POS, g0, g1 + 1)
                          for j in range(batch.partitions)] or [np.empty(0, POS)])
    pos = pos[(pos["chunk"] >= c0) & (pos["chunk"] <= c1)]
    pos = pos[np.argsort(pos["chunk"], kind="stable")]
    chunks, starts = np.unique(pos["chunk"], return_index=True)
    return {int(c): rows for c, rows in zip(chunks, np.split(pos["row"], starts[1:]))}


def write_shards(batch: Batch, specs: list[dict[str, Any]]) -> int:
    """Step 3: final shards. A spec: ``name``, ``source`` (input file, kept in the footer),
    ``parts`` ([staged chunk, first kept row, end] ...), ``rename`` (the one part is a whole
    chunk without duplicates). Returns the number of shards written."""
    rd = RunDir(batch.url)
    chunks = [c for s in specs for c, _, _ in s["parts"]]
    dups = _dups_of(rd, batch, min(chunks), max(chunks)) if chunks else {}
    cache: dict[int, pa.Table] = {}

    def kept(c: int) -> pa.Table:
        if c not in cache:
            cache.clear()  # specs come in pool order: a chunk is never needed again
            t = rd.read(STAGING, shard_name(c))
            if c in dups:
                mask = np.ones(t.num_rows, bool)
                mask[dups[c]] = False
                t = t.filter(pa.array(mask))
            cache[c] = t
        return cache[c]

    written = 0
    for s in specs:
        dst = rd.path("pool", s["name"])
        if rd.fs.exists(dst):  # written by an attempt that did not finish
            continue
        if s["rename"]:
            _move(rd, rd.path(STAGING, shard_name(s["parts"][0][0])), dst)
        else:
            t = pa.concat_tables([kept(c).slice(a, b - a) for c, a, b in s["parts"]],
                                 promote_options="permissive")
            write_parquet_atomic(rd.fs, dst, t, meta={"source": s["source"]})
        written += 1
        faults.trace("ingest.write", s["name"])
        faults.maybe_fail("ingest.write", s["name"], after_write=True)
    return written


def final_layout(files: list[dict[str, Any]], dups: np.ndarray, first: int, size: int
                 ) -> list[dict[str, Any]]:
    """The final shards of a batch, as ``write_shards`` specs, in pool order.

    ``files``: the pending files (``first`` staged chunk, ``chunks`` rows per chunk);
    ``dups``: duplicates per staged chunk of the batch. Also sets each file's ``rows`` and
    ``shards``. Shards are numbered from ``first``, a file's kept rows cut in ``size``.
    """
    specs: list[dict[str, Any]] = []
    nxt = first
    for f in files:
        cs = list(range(f["first"], f["first"] + len(f["chunks"])))
        kept = [n - int(dups[c - first]) for c, n in zip(cs, f["chunks"])]
        total = sum(kept)
        f["rows"], f["shards"] = total, []
        ci, at = 0, 0  # current chunk (index into cs), kept rows of it already taken
        for _ in range(-(-total // size)):
            parts, need = [], size
            while need and ci < len(cs):
                take = min(need, kept[ci] - at)
                if take:
                    parts.append([cs[ci], at, at + take])
                need -= take
                at += take
                if at == kept[ci]:
                    ci, at = ci + 1, 0
            c, a, b = parts[0]
            whole = (len(parts) == 1 and a == 0 and b == f["chunks"][c - f["first"]])
            name = shard_name(nxt)
            specs.append({"name": name, "source": f["path"], "parts": parts, "rename": whole})
            f["shards"].append(name)
            nxt += 1
    return specs


def _ray_running() -> bool:
    """Whether this process started or joined Ray (then the steps run on its workers)."""
    from curate.core import engine

    return engine.is_initialized()


def run_step(fn: Any, items: list[Any], desc: str, fold: Any = None) -> float:
    """``fold(fn(item))`` for every item as it finishes, in any order: on Ray workers
    (``batches.map_batched``, retried) when Ray is initialised, as ``curate run`` does before
    ingest; in this process otherwise (ingest called as a library, tests), where starting
    Ray would cost more than a small pool's work. Any item that still fails is an error
    (exit 3): the batch stays pending, and a rerun finishes it. Returns the seconds taken."""
    t = time.monotonic()
    if not _ray_running():
        for item in items:
            value = fn(item)
            if fold is not None:
                fold(value)
        return time.monotonic() - t
    from curate.core import batches

    errors: list[str] = []

    def done(outcome: Any) -> None:
        if not outcome.ok:
            errors.append(outcome.error or "failed")
        elif fold is not None:
            fold(outcome.value)
        outcome.value = None  # the driver keeps only the fold

    # several partitions per task when they far outnumber the task slots (a small pool's
    # 64 partitions were 64 tasks of a few ms each); the failure policy stays per item
    batches.map_batched(fn, items, desc=desc, on_done=done)
    if errors:
        raise FailedShardsError(
            f"{desc}: {len(errors)} of {len(items)} tasks failed (e.g. {errors[0]}); "
            "rerun the same command to finish the pool's duplicate detection")
    return time.monotonic() - t
