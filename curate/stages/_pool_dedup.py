"""Exact duplicate uids across a whole pool, found on Ray workers by hash partitioning.

Why: ingest used to keep every uid seen so far in a set on the driver (16 B per pair: 16 GB
for a 1B-pair pool), against the rule that the driver holds O(1) state per pair. Here the
driver holds counts per shard; each worker task holds 1/P of the keys.

The rule is unchanged: a uid that occurred earlier in the pool (in an earlier run's shards,
an earlier file in processing order or an earlier row of the same file) is a duplicate; the
first occurrence wins. Two uids are one when they are the same string. A uid's 128-bit key
is its 16 bytes when it is 32 lowercase hex digits (curate's own uids, decoded in one call),
else the first 16 bytes of its sha256 (any other uid: hashed, so it is never mistaken for a
hex one); two distinct uids share a key with probability ~n²/2¹²⁹, nil for any real pool.

ingest.py stages a *batch* (the new files of one ingest call) as ``pool/_staging/part-N``
chunks, rows exactly as read, then runs three steps (``engine.map_items``; in-process when
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
   returns duplicates per staged chunk. Memory per task: ~pool/P keys (16 B committed, 24 B
   new, plus the sort's index), flat in the pool size when P grows with it.
3. ``write``, a task per group: each final shard is a file's kept rows cut in
   ``shard_size``, exactly the shards an ingest that never wrote a duplicate produces. A
   staged chunk that is a final shard as it is (no duplicates, same cut) is renamed; the
   others are rewritten from the staged chunks minus their duplicates.

Files (``.bin``): an int64 count n, n+1 int64 offsets (records), then the records. A task
reads one range of a file (partition j of a keys file, a run of groups of a dups file)
with two ranged reads, so the shuffle is P x groups reads, not P x shards files.

Every output is written atomically under a name fixed by the batch, and a task whose output
exists returns what it would have computed: a crash anywhere, then a rerun (which finishes
the pending batch first), gives what an uninterrupted ingest gives. Fault points:
``ingest.keys:G``, ``ingest.dedup:J``, ``ingest.write:part-N`` (after the write) and
``ingest.dedup:commit`` (on the driver, before run.json records the batch).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.uids import mix64
from curate.core import faults
from curate.core.io import is_local, shard_index, write_bytes_atomic, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.errors import FailedShardsError

#: partitions of a run directory's keys (recorded in run.json, so later runs keep it):
#: a 1B-pair pool puts ~16M keys (~400 MB while sorting) in each dedup task
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


def uid_keys128(uids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The 128-bit key of every uid as two uint64 halves (see the module docstring)."""
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks() if uids.num_chunks else pa.array([], pa.string())
    is_hex = pc.fill_null(pc.match_substring_regex(uids, "^[0-9a-f]{32}$"), False)
    if pc.all(is_hex).as_py() in (True, None):
        raw = _hex_bytes(uids)
    else:
        raw = np.empty((len(uids), 16), np.uint8)
        mask = is_hex.to_numpy(zero_copy_only=False)
        if mask.any():
            raw[mask] = _hex_bytes(uids.filter(is_hex))
        raw[~mask] = np.frombuffer(b"".join(
            hashlib.sha256(u.encode()).digest()[:16]
            for u in uids.filter(pc.invert(is_hex)).to_pylist()), np.uint8).reshape(-1, 16)
    keys = np.ascontiguousarray(raw).view("<u8").reshape(-1, 2)
    return keys[:, 0].copy(), keys[:, 1].copy()


_NIBBLE = np.zeros(256, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def _hex_bytes(uids: pa.Array) -> np.ndarray:
    """The 16 bytes of each of ``uids``, all 32 lowercase hex digits: decoded from the
    string buffer in NumPy, no Python string per uid."""
    n = len(uids)
    if n == 0:
        return np.empty((0, 16), np.uint8)
    width = np.int64 if pa.types.is_large_string(uids.type) else np.int32
    off = np.frombuffer(uids.buffers()[1], width)[uids.offset: uids.offset + n + 1]
    nib = _NIBBLE[np.frombuffer(uids.buffers()[2], np.uint8)[off[0]: off[-1]]].reshape(n, 32)
    return (nib[:, 0::2] << 4) | nib[:, 1::2]


def partition_of(hi: np.ndarray, lo: np.ndarray, partitions: int) -> np.ndarray:
    return (mix64(hi ^ mix64(lo)) % np.uint64(partitions)).astype(np.int64)


def repeats(keys: np.ndarray) -> np.ndarray:
    """Mask of the entries of ``keys`` (KEY fields, any order) equal to an earlier entry."""
    order = np.lexsort((keys["lo"], keys["hi"]))  # stable: equal keys keep their order
    s = keys[order]
    out = np.zeros(len(keys), bool)
    out[order[1:]] = (s["hi"][1:] == s["hi"][:-1]) & (s["lo"][1:] == s["lo"][:-1])
    return out


# ----------------------------------------------------------------------------- files
def write_ranges(rd: RunDir, path: str, records: np.ndarray, bounds: np.ndarray) -> None:
    """``records`` with the offsets ``bounds`` (range i is records[bounds[i]:bounds[i+1]])."""
    head = np.concatenate([[len(bounds) - 1], bounds]).astype("<i8")
    write_bytes_atomic(rd.fs, rd.path(path), head.tobytes() + records.tobytes())


def read_ranges(rd: RunDir, path: str, dtype: np.dtype, i0: int, i1: int) -> np.ndarray:
    """Records of ranges ``i0 .. i1 - 1`` of a file written by :func:`write_ranges`."""
    p = rd.path(path)
    n = int(np.frombuffer(rd.fs.cat_file(p, start=0, end=8), "<i8")[0])
    bounds = np.frombuffer(rd.fs.cat_file(p, start=8 + 8 * i0, end=16 + 8 * i1), "<i8")
    start = 8 * (n + 2) + int(bounds[0]) * dtype.itemsize
    end = 8 * (n + 2) + int(bounds[-1]) * dtype.itemsize
    data = rd.fs.cat_file(p, start=start, end=end) if end > start else b""
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


def dedup_partition(batch: Batch, j: int) -> np.ndarray:
    """Step 2 for partition ``j``: returns the duplicates of partition j per staged chunk."""
    rd = RunDir(batch.url)
    faults.maybe_fail("ingest.dedup", str(j))
    if rd.fs.exists(rd.path(dups_path(j))) and rd.fs.exists(rd.path(gen_path(j, batch.gen))):
        pos = read_ranges(rd, dups_path(j), POS, 0, batch.groups)
    else:
        committed = [read_ranges(rd, gen_path(j, g), KEY, 0, 1) for g in range(batch.gen)
                     if rd.fs.exists(rd.path(gen_path(j, g)))]
        old = [read_ranges(rd, keys_path("old", g), REC, j, j + 1)[["hi", "lo"]]
               for g in range(batch.old_groups)]
        new = np.concatenate([read_ranges(rd, keys_path("keys", g), REC, j, j + 1)
                              for g in range(batch.groups)] or [np.empty(0, REC)])
        old_keys = np.concatenate(old or [np.empty(0, KEY)]).astype(KEY)
        earlier = np.concatenate([*committed, old_keys]).astype(KEY)
        both = np.concatenate([earlier, new[["hi", "lo"]].astype(KEY)])
        dup = repeats(both)[len(earlier):]
        fresh = np.concatenate([old_keys[~repeats(old_keys)],
                                new[~dup][["hi", "lo"]].astype(KEY)])
        fresh = fresh[np.lexsort((fresh["lo"], fresh["hi"]))]
        write_ranges(rd, gen_path(j, batch.gen), fresh, np.array([0, len(fresh)]))
        pos = new[dup][["chunk", "row"]].astype(POS)  # in pool order: by chunk, then row
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
    return {int(c): pos["row"][pos["chunk"] == c] for c in np.unique(pos["chunk"])}


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
            t = rd.read(STAGING, f"part-{c:05d}.parquet")
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
            _move(rd, rd.path(STAGING, f"part-{s['parts'][0][0]:05d}.parquet"), dst)
        else:
            t = pa.concat_tables([kept(c).slice(a, b - a) for c, a, b in s["parts"]],
                                 promote_options="permissive")
            write_parquet_atomic(rd.fs, dst, t, meta={"source": s["source"]})
        written += 1
        faults.trace("ingest.write", s["name"])
        faults.maybe_fail("ingest.write", s["name"], after_write=True)
    return written


def final_layout(files: list[dict[str, Any]], dups: np.ndarray, first: int, size: int
                 ) -> list[list[dict[str, Any]]]:
    """The final shards of a batch, as ``write_shards`` specs, grouped in pool order.

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
            name = f"part-{nxt:05d}.parquet"
            specs.append({"name": name, "source": f["path"], "parts": parts, "rename": whole})
            f["shards"].append(name)
            nxt += 1
    return specs


def run_step(fn: Any, items: list[Any], desc: str, fold: Any = None) -> None:
    """``fold(fn(item))`` for every item as it finishes, in any order: on Ray workers
    (``engine.map_items``, retried) when Ray is initialised, as ``curate run`` does before
    ingest; in this process otherwise (ingest called as a library, tests), where starting
    Ray would cost more than a small pool's work. Any item that still fails is an error
    (exit 3): the batch stays pending, and a rerun finishes it."""
    import ray

    if not ray.is_initialized():
        for item in items:
            value = fn(item)
            if fold is not None:
                fold(value)
        return
    from curate.core import engine

    errors: list[str] = []

    def done(outcome: Any) -> None:
        if not outcome.ok:
            errors.append(outcome.error or "failed")
        elif fold is not None:
            fold(outcome.value)
        outcome.value = None  # the driver keeps only the fold

    engine.map_items(fn, items, desc=desc, on_done=done)
    if errors:
        raise FailedShardsError(
            f"{desc}: {len(errors)} of {len(items)} tasks failed (e.g. {errors[0]}); "
            "rerun the same command to finish the pool's duplicate detection")
