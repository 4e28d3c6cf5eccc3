"""The worker side of ``curate index`` (:mod:`curate.app.index` plans and merges): one pool
shard's selected pairs and their embeddings, its count, its share of the training and query
samples, and its part of the index. Each function is one engine task and writes what it
makes under the build's work folder (``RUN/index/_parts/<digest>/``) before it returns, so a
rerun after a crash skips every shard whose file is there.

FAISS reads and writes through :func:`curate.algorithms.ann.write`/``read`` on the run
directory's own filesystem (any fsspec URL), under a temporary name renamed into place.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.algorithms import ann
from curate.algorithms.kmeans_sample import sample_mask
from curate.core import engine, faults
from curate.core.io import read_table, write_atomic, write_bytes_atomic, write_parquet_atomic
from curate.core.rundir import RunDir

K = 10  # recall@K
SEED_TRAIN, SEED_EVAL, SEED_TUNE = 0, 1, 2


@dataclass(frozen=True)
class Plan:
    """What every task of one build needs (small, picklable)."""

    run: str
    source: str  # folder holding the embeddings: a score stage's or ``pool``
    columns: dict[str, str]  # which index -> embedding column ("image": "image_emb")
    select: str  # all | survivors | curated
    deciding: str | None = None  # the last deciding stage's folder (survivors)
    curated: str | None = None  # emit's folder (curated)
    covers: dict[str, list[str]] = field(default_factory=dict)  # shard -> curated files
    work: str = ""  # path of the work folder in the run's filesystem

    def path(self, *parts: str) -> str:
        return "/".join([self.work, *parts])


def rows(plan: Plan, shard: str) -> tuple[pa.Array, dict[str, np.ndarray]]:
    """The shard's selected pairs that have every indexed embedding: (uids, which ->
    embeddings [n, d] as stored), in the source file's row order."""
    rd = RunDir(plan.run)
    empty = pa.array([], pa.string()), {w: np.zeros((0, 0), np.float16) for w in plan.columns}
    if not rd.fs.exists(rd.shard_path(plan.source, shard)):
        return empty  # the shard failed in the source stage: none of its pairs has a vector
    t = rd.read(plan.source, shard, ["uid", *plan.columns.values()])
    mask = pc.is_valid(t["uid"])
    for col in plan.columns.values():
        mask = pc.and_(mask, pc.is_valid(t[col]))
    if plan.select == "survivors":
        if not rd.fs.exists(rd.shard_path(plan.deciding, shard)):
            return empty
        mask = pc.and_(mask, pc.is_in(t["uid"], value_set=rd.kept_uids(plan.deciding, shard)))
    elif plan.select == "curated":
        files = plan.covers.get(shard, [])
        kept = pa.concat_arrays([read_table(rd.fs, rd.path(plan.curated, f), ["uid"])["uid"]
                                 .combine_chunks() for f in files]) if files else None
        if kept is None:
            return empty
        mask = pc.and_(mask, pc.is_in(t["uid"], value_set=kept))
    t = t.filter(mask)
    mats = {}
    for which, col in plan.columns.items():
        arr = t[col].combine_chunks()
        flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
        mats[which] = flat.reshape(len(arr), -1) if len(arr) else np.zeros((0, 0), flat.dtype)
    return t["uid"].combine_chunks(), mats


def count(plan: Plan, shard: str) -> dict[str, Any]:
    uids, mats = rows(plan, shard)
    return {"rows": len(uids), "dims": {w: int(m.shape[1]) for w, m in mats.items() if len(m)}}


def sample(plan: Plan, fractions: dict[str, float], shard: str) -> dict[str, Any]:
    """Draw the shard's share of the training sample (written to ``sample/``) and of the
    held-out queries (returned: local rows and their vectors). Drawn by a seeded uid hash,
    so the samples do not depend on how the pool is cut into shards."""
    rd = RunDir(plan.run)
    path = plan.path("sample", shard.replace(".parquet", ".npz"))
    if rd.fs.exists(path):
        with rd.fs.open(path, "rb") as f:
            z = np.load(io.BytesIO(f.read()))
            return _queries(z, plan)
    uids, mats = rows(plan, shard)
    out: dict[str, np.ndarray] = {}
    for name, seed in (("train", SEED_TRAIN), ("eval", SEED_EVAL), ("tune", SEED_TUNE)):
        out[f"{name}_rows"] = np.flatnonzero(sample_mask(uids, fractions[name], seed))
    for which, x in mats.items():
        out[f"train_{which}"] = x[out["train_rows"]]
        q = np.union1d(out["eval_rows"], out["tune_rows"])
        out[f"query_{which}"] = x[q] if len(x) else x
    buf = io.BytesIO()
    np.savez(buf, **out)
    write_bytes_atomic(rd.fs, path, buf.getvalue())
    return _queries(out, plan)


def _queries(z: Any, plan: Plan) -> dict[str, Any]:
    q = np.union1d(z["eval_rows"], z["tune_rows"])
    return {"eval": np.asarray(z["eval_rows"]), "tune": np.asarray(z["tune_rows"]), "rows": q,
            "vectors": {w: np.asarray(z[f"query_{w}"]) for w in plan.columns},
            "train": int(len(z["train_rows"]))}


def train(plan: Plan, shards: list[str], item: tuple[str, str, int]) -> dict[str, Any]:
    """``which``'s empty index of ``key`` for ``d`` dims, trained (unless Flat) on every
    shard's sample rows; written to ``<which>.trained``. One task holding a node's CPUs."""
    which, key, d = item
    rd = RunDir(plan.run)
    path = plan.path(f"{which}.trained")
    if rd.fs.exists(path):
        return {"skipped": True}
    x = np.zeros((0, d), np.float32)
    if ann.train_size(key, 1):
        got = []
        for s in shards:
            with rd.fs.open(plan.path("sample", s.replace(".parquet", ".npz")), "rb") as f:
                got.append(np.load(io.BytesIO(f.read()))[f"train_{which}"])
        x = ann.normalise(np.concatenate([g for g in got if len(g)]))
    with ann.threads(engine.assigned_cpus()):
        index = ann.train(key, x) if len(x) else ann.new_index(key, d)
    save(rd.fs, path, index)
    return {"train_size": len(x)}


def part(plan: Plan, offsets: dict[str, int], queries: dict[str, np.ndarray],
         shard: str) -> dict[str, Any]:
    """The shard's rows added to each trained index (global row ids from ``offsets``), and
    the exact top-(K+1) of the held-out queries among them: ``part/part-N.*``. The uid file
    is written last: it marks the part done."""
    rd = RunDir(plan.run)
    stem = plan.path("part", shard.replace(".parquet", ""))
    if rd.fs.exists(f"{stem}.uids.parquet"):
        return {"skipped": True}
    faults.maybe_fail("index.part", shard)
    uids, mats = rows(plan, shard)
    first = offsets[shard]
    truth = {}
    with ann.threads(engine.assigned_cpus()):
        for which, x in mats.items():
            index = load(rd.fs, plan.path(f"{which}.trained"))
            x = ann.normalise(x) if len(x) else np.zeros((0, index.d), np.float32)
            ann.add(index, x, first)
            save(rd.fs, f"{stem}.{which}.faiss", index)
            s, i = ann.exact_topk(queries[which], x, K + 1, first)
            truth[f"s_{which}"], truth[f"i_{which}"] = s, i
    buf = io.BytesIO()
    np.savez(buf, **truth)
    write_bytes_atomic(rd.fs, f"{stem}.truth.npz", buf.getvalue())
    write_parquet_atomic(rd.fs, f"{stem}.uids.parquet", pa.table({"uid": uids}))
    faults.maybe_fail("index.part", shard, after_write=True)
    faults.trace("index.part", shard)
    return {"rows": len(uids)}


def save(fs: Any, path: str, index: Any) -> None:
    """Stream ``index`` to ``path`` under a temporary name, then rename it into place."""
    write_atomic(fs, path, lambda f: ann.write(index, f.write))


def load(fs: Any, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return ann.read(f.read)


def write_ids(fs: Any, path: str, plan: Plan, shards: list[str]) -> None:
    """``ids.parquet`` (row -> uid): the parts' uid files in shard order, streamed."""
    schema = pa.schema([("uid", pa.string())])

    def write(f: Any) -> None:
        with pq.ParquetWriter(f, schema, compression="zstd") as w:
            for s in shards:
                w.write_table(read_table(fs, plan.path(
                    "part", s.replace(".parquet", ".uids.parquet"))).cast(schema))

    write_atomic(fs, path, write)
