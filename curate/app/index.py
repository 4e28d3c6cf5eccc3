"""``curate index RUN``: a kNN index over a run's embeddings, and :func:`open_index`, the API
the explore app searches it with.

What is indexed: the image embeddings (``image_emb``) of the run's last score stage whose
output has them, else the pool's ``image_emb``; a text index too when the same source has
``text_emb``. A row is a pair with every indexed embedding. Which pairs (``pairs``):

- ``kept`` (default): the curated set, i.e. the pairs in emit's output when emit ran (so a
  takedown's removals are left out), else the survivors of the last deciding stage that ran;
- ``all``: every pair with an embedding, the dropped ones too, so drops can be looked at.

The index kind, its training sample and its search settings are chosen by
:mod:`curate.algorithms.ann` (autofaiss's rules; where and why curate departs is said there).
The build, in engine tasks per pool shard (:mod:`curate.app.index_parts`): count the pairs;
draw the training sample and the held-out queries by uid hash; train each index (one task);
fill one part per shard, with the exact top-11 of the queries among its rows; then on the
driver merge the parts' inverted lists, tune nprobe, measure recall@10 against the exact
answer, and write::

    RUN/index/info.json     what was built (below), and the digest of its inputs
    RUN/index/image.faiss   the image index (text.faiss: the text index)
    RUN/index/ids.parquet   row -> uid (row i of every index is pair uid[i])

Resumable: the parts are files under ``RUN/index/_parts/<digest>/``, kept until the index is
written, so a rerun after a crash builds only what is missing; a rerun with nothing changed
(the same stage outputs, takedowns and options) does nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.algorithms import ann
from curate.algorithms.kmeans_sample import uid_to_u64
from curate.app import index_parts as parts
from curate.core import engine
from curate.core.io import read_table, write_bytes_atomic
from curate.core.rundir import RunDir
from curate.core.work import Resources
from curate.errors import ConfigError, FailedShardsError, InputError

log = logging.getLogger(__name__)

FOLDER = "index"
VERSION = 1
N_EVAL, N_TUNE = 1000, 500  # held-out queries: recall reported / nprobe tuned on
TARGET = 0.95  # recall@10 nprobe is tuned for
PAIRS = ("kept", "all")


class Neighbours:
    """One built index, opened: rows are pairs (``uids[i]``), scores are cosines."""

    def __init__(self, index: Any, uids: pa.Array, info: dict[str, Any]) -> None:
        self.index, self.info = index, info
        self.uids = uids  # row -> uid (Arrow strings: no Python object per pair)
        keys = uid_to_u64(uids)
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]

    def __len__(self) -> int:
        return len(self.uids)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self.row(uid) is not None

    def row(self, uid: str) -> int | None:
        """The row of ``uid`` in the index, None when it is not indexed."""
        key = uid_to_u64([uid])[0]
        lo = int(np.searchsorted(self._keys, key))
        while lo < len(self._keys) and self._keys[lo] == key:
            if self.uids[int(self._order[lo])].as_py() == uid:
                return int(self._order[lo])
            lo += 1
        return None

    def vector(self, uid: str) -> np.ndarray | None:
        """The pair's indexed vector (L2-normalised at build; a PQ or SQ kind gives its
        decoded approximation), None when the pair is not indexed."""
        row = self.row(uid)
        return None if row is None else ann.vector(self.index, row)

    def search(self, q: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest pairs of each query row (float32 [n, d], L2-normalised):
        (uid, cosine) best first."""
        k = max(0, min(int(k), len(self.uids)))
        if k == 0:
            return [[] for _ in range(len(np.atleast_2d(q)))]
        scores, rows = ann.search(self.index, q, k)
        names = pc.take(self.uids, pa.array(np.maximum(rows, 0).ravel())).to_pylist()
        return [[(names[i * k + j], float(s)) for j, (s, r) in enumerate(zip(srow, rrow))
                 if r >= 0] for i, (srow, rrow) in enumerate(zip(scores, rows))]

    def neighbors(self, uid: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest other pairs of ``uid`` (itself left out), best first; [] when
        ``uid`` is not indexed."""
        row = self.row(uid)
        if row is None:
            return []
        hits = self.search(ann.vector(self.index, row)[None], k + 1)[0]
        return [(u, s) for u, s in hits if u != uid][:k]


def open_index(run_url: str, which: str = "image") -> Neighbours:
    """The built index ``which`` (image | text) of a run; InputError when there is none."""
    rd = RunDir(run_url)
    info = _read_info(rd)
    if info is None:
        raise InputError(f"{run_url}: no kNN index (RUN/index/info.json); build it with "
                         f"`curate index {run_url}`")
    one = (info.get("indexes") or {}).get(which)
    if one is None:
        raise InputError(f"{run_url}: no {which} index (built: "
                         f"{', '.join(info.get('indexes') or {}) or 'none'})")
    index = parts.load(rd.fs, rd.path(FOLDER, one["file"]))
    ann.set_nprobe(index, one.get("nprobe") or 1)
    uids = read_table(rd.fs, rd.path(FOLDER, info["ids"]), ["uid"])["uid"].combine_chunks()
    flat = {k: v for k, v in info.items() if k != "indexes"}
    return Neighbours(index, uids, {**flat, **one, "which": which})


def _read_info(rd: RunDir) -> dict[str, Any] | None:
    path = rd.path(FOLDER, "info.json")
    if not rd.fs.exists(path):
        return None
    with rd.fs.open(path, "rb") as f:
        return json.loads(f.read())


# --------------------------------------------------------------------------- the build
def build_index(run_url: str, pairs: str = "kept", memory: str = "4GB", kind: str = "auto"
                ) -> dict[str, Any]:
    """Build (or resume, or find up to date) the run's index; returns info.json's content
    with ``"up_to_date": True`` when nothing had to be done."""
    from curate.stages.registry import recorded_pipeline

    if pairs not in PAIRS:
        raise ConfigError(f"--pairs {pairs!r}: expected kept or all")
    try:
        budget = ann.parse_memory(memory)
    except ValueError as err:
        raise ConfigError(f"--memory: {err}") from None
    try:
        if kind != "auto":
            ann.describe(kind)
    except ValueError as err:
        raise ConfigError(f"--kind: {err}") from None
    cfg = recorded_pipeline(run_url)  # RunDirError (exit 2) when RUN is not a run
    rd = RunDir(run_url)
    with rd:
        manifest = rd.load_manifest()
        plan, described, ids = _plan(rd, cfg, manifest, pairs)
        digest = _digest(rd, manifest, [described, ids], pairs, budget, kind)
        old = _read_info(rd)
        if old and old.get("digest") == digest and all(
                rd.fs.exists(rd.path(FOLDER, f)) for f in _files(old)):
            return {**old, "up_to_date": True}
        if old:  # readers see no index rather than old and new files mixed
            rd.fs.rm(rd.path(FOLDER, "info.json"))
        engine.init(cfg.run.num_cpus)
        opts = {"max_retries": cfg.run.max_retries, "timeout_s": cfg.run.shard_timeout_s}
        plan = dataclasses.replace(plan, work=rd.path(FOLDER, "_parts", digest[:16]))
        t0 = time.monotonic()
        info = _build(rd, plan, rd.pool_shards(), budget, kind, opts)
        info.update(described, digest=digest, pairs=pairs, memory_budget=budget,
                    build_seconds=round(time.monotonic() - t0, 3), version=VERSION)
        write_bytes_atomic(rd.fs, rd.path(FOLDER, "info.json"),
                           json.dumps(info, indent=2, sort_keys=True).encode())
        if rd.fs.exists(rd.path(FOLDER, "_parts")):
            rd.fs.rm(rd.path(FOLDER, "_parts"), recursive=True)
    return info


def _files(info: dict[str, Any]) -> list[str]:
    return [info["ids"], *(one["file"] for one in (info.get("indexes") or {}).values())]


def _plan(rd: RunDir, cfg: Any, manifest: dict[str, Any], pairs: str
          ) -> tuple[parts.Plan, dict[str, Any], list]:
    """Where the embeddings come from and which pairs are indexed (the tasks' plan, its
    description for info.json, the output ids of the stages it reads); InputError when the
    run has no image embeddings."""
    stages = manifest.get("stages") or {}
    done = [r for r in cfg.refs()  # ran: done, or done but for failed shards (no output)
            if (stages.get(r.name) or {}).get("status") in ("done", "failed")]
    source = None
    for ref in reversed([r for r in done if r.kind == "score"]):
        names = _columns(rd, ref.folder)
        if "image_emb" in names:
            source = (ref, names)
            break
    pool = _columns(rd, "pool") if source is None else []
    if "image_emb" in pool:
        source = (None, pool)
    if source is None:
        raise InputError(f"{rd.url}: no image embeddings to index (no score stage output with "
                         "image_emb, no pool column image_emb)")
    ref, names = source
    columns = {"image": "image_emb", **({"text": "text_emb"} if "text_emb" in names else {})}
    folder = ref.folder if ref else "pool"
    described: dict[str, Any] = {"source": {"stage": ref.name if ref else "pool",
                                            "folder": folder, "columns": columns}}
    emit = next((r for r in done if r.kind == "emit"), None)
    deciding = [r for r in done if r.decides]
    if pairs == "all":
        plan, by = parts.Plan(rd.url, folder, columns, "all"), None
    elif emit and rd.fs.exists(rd.path(emit.folder, "_plan.json")):
        with rd.fs.open(rd.path(emit.folder, "_plan.json"), "rb") as f:
            jobs = json.loads(f.read())
        covers: dict[str, list[str]] = {}
        for job in jobs:
            for shard, _, _ in job["slices"]:
                if job["name"] not in covers.setdefault(shard, []):
                    covers[shard].append(job["name"])
        plan = parts.Plan(rd.url, folder, columns, "curated", curated=emit.folder, covers=covers)
        by = emit.name
    elif deciding:
        plan = parts.Plan(rd.url, folder, columns, "survivors", deciding=deciding[-1].folder)
        by = deciding[-1].name
    else:
        plan, by = parts.Plan(rd.url, folder, columns, "all"), "none (no deciding stage ran)"
    described["selected_by"] = by
    read = [r.name for r in (ref, emit if plan.select == "curated" else None,
                             deciding[-1] if plan.select == "survivors" else None) if r]
    return plan, described, [(n, (stages.get(n) or {}).get("output_id")) for n in read]


def _columns(rd: RunDir, folder: str) -> list[str]:
    shards = rd.fs.glob(rd.path(folder, "part-*.parquet"))
    if not shards:
        return []
    with rd.fs.open(sorted(shards)[0], "rb") as f:
        return list(pq.read_schema(f).names)


def _digest(rd: RunDir, manifest: dict[str, Any], read: list, pairs: str, budget: int,
            kind: str) -> str:
    """What the index depends on: the outputs of the stages it reads, the pool, removals
    by takedown, and the options."""
    pool = manifest.get("pool") or {}
    removed = rd.path("takedown", "removed.parquet")
    taken = ""
    if rd.fs.exists(removed):
        with rd.fs.open(removed, "rb") as f:
            taken = hashlib.sha256(f.read()).hexdigest()
    blob = json.dumps([VERSION, pairs, budget, kind, read, pool.get("inputs"), pool.get("rows"),
                       taken], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _map(fn: Any, items: list, what: str, opts: dict[str, Any], **kw: Any) -> list[Any]:
    """One engine call; a failed item stops the build (exit 3, resumable). Its wall time
    goes to ``opts["seconds"][what]``."""
    t0 = time.monotonic()
    run = {k: v for k, v in opts.items() if k != "seconds"}
    outcomes = engine.map_items(fn, items, desc=f"index.{what}", **run, **kw)
    opts.setdefault("seconds", {})[what] = round(time.monotonic() - t0, 3)
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise FailedShardsError(f"index.{what}: {len(bad)} of {len(items)} items failed "
                                f"(e.g. {bad[0].item}: {bad[0].error}); rerun the same "
                                "command to resume")
    return [o.value for o in outcomes]


def _build(rd: RunDir, plan: parts.Plan, shards: list[str], budget: int, kind: str,
           opts: dict[str, Any]) -> dict[str, Any]:
    counted = _map(partial(parts.count, plan), shards, "count", opts)
    n = sum(c["rows"] for c in counted)
    dims = {w: d for c in counted for w, d in c["dims"].items()}
    if n == 0:
        raise InputError(f"{rd.url}: no pairs to index (none of the selected pairs has "
                         f"{' and '.join(plan.columns.values())})")
    offsets = dict(zip(shards, np.cumsum([0] + [c["rows"] for c in counted[:-1]]).tolist()))
    try:
        keys = {w: ann.choose_key(n, dims[w], budget) if kind == "auto" else kind
                for w in plan.columns}
    except ValueError as err:
        raise ConfigError(f"--memory: {err}") from None
    if int(ann.describe(keys["image"]).get("nlist", 0)) > n:
        raise ConfigError(f"--kind {kind}: more lists than the {n} pairs to index")
    train = max(ann.train_size(k, n) for k in keys.values())
    fractions = {"train": min(1.0, train / n), "eval": min(1.0, N_EVAL / n),
                 "tune": min(1.0, N_TUNE / n)}
    drawn = _map(partial(parts.sample, plan, fractions), shards, "sample", opts)
    todo = [(w, k, dims[w]) for w, k in keys.items()]
    res = Resources(num_cpus=engine.node_cpus())
    trained = _map(partial(parts.train, plan, shards), todo, "train", opts, resources=res)
    queries = {w: ann.normalise(np.concatenate([d["vectors"][w] for d in drawn
                                                if len(d["rows"])]))
               for w in plan.columns}
    q_rows = np.concatenate([d["rows"] + offsets[s] for s, d in zip(shards, drawn)])
    pos = {int(r): j for j, r in enumerate(q_rows)}
    sel = {name: np.array([pos[int(r) + offsets[s]] for s, dr in zip(shards, drawn)
                           for r in dr[name]], dtype=np.int64) for name in ("eval", "tune")}
    done = _map(partial(parts.part, plan, offsets, queries), shards, "part", opts)
    infos = {}
    for (which, key, d), t in zip(todo, trained):
        infos[which] = _finish(rd, plan, shards, which, key, queries[which], q_rows, sel)
        infos[which].update(d=d, n=n, train_size=t.get("train_size"))
    parts.write_ids(rd.fs, rd.path(FOLDER, "ids.parquet"), plan, shards)
    return {"n": n, "ids": "ids.parquet", "indexes": infos, "shards": len(shards),
            "parts_reused": sum(1 for r in done if r.get("skipped")),
            "seconds": opts.get("seconds", {})}


def _finish(rd: RunDir, plan: parts.Plan, shards: list[str], which: str, key: str,
            queries: np.ndarray, q_rows: np.ndarray, sel: dict[str, np.ndarray]
            ) -> dict[str, Any]:
    """Merge one index's parts (one part in memory at a time besides the index), tune
    nprobe on the ``tune`` queries, measure recall on the ``eval`` ones, write it."""
    t0 = time.monotonic()
    index, truth = None, None
    for s in shards:
        stem = plan.path("part", s.replace(".parquet", ""))
        one = parts.load(rd.fs, f"{stem}.{which}.faiss")
        index = one if index is None else ann.merge([index, one])
        z = _npz(rd, f"{stem}.truth.npz")
        got = (z[f"s_{which}"], z[f"i_{which}"])
        truth = got if truth is None else ann.merge_topk([truth, got], parts.K + 1)
    ann.finish(index)
    truth_i = truth[1]
    tune, ev = sel["tune"], sel["eval"]
    nprobe, ladder = ann.tune_nprobe(index, queries[tune], truth_i[tune], q_rows[tune],
                                     parts.K, TARGET)
    params = ann.set_nprobe(index, nprobe)
    found = ann.search(index, queries[ev], parts.K + 1)[1]
    own = (np.stack([ann.vector(index, int(r)) for r in q_rows[ev]]) if len(ev)
           else queries[ev])  # what neighbors(uid) asks with: the indexed vector
    by_uid = ann.search(index, own, parts.K + 1)[1]
    name = f"{which}.faiss"
    parts.save(rd.fs, rd.path(FOLDER, name), index)
    k, t_ev, q_ev = parts.K, truth_i[ev], q_rows[ev]
    return {"kind": key, "metric": "inner_product", "file": name,
            "memory_bytes": int(rd.fs.size(rd.path(FOLDER, name))),
            "estimated_bytes": ann.estimate_bytes(key, index.ntotal, index.d),
            "nprobe": nprobe or None, "search_params": params, "tuning": ladder,
            "recall_at_10": round(ann.recall_at_k(found, t_ev, q_ev, k), 4),
            "nn_recall_at_10": round(ann.recall_at_k(found, t_ev, q_ev, k, of=1), 4),
            "recall_at_10_by_uid": round(ann.recall_at_k(by_uid, t_ev, q_ev, k), 4),
            "recall_queries": int(len(ev)), "merge_seconds": round(time.monotonic() - t0, 3)}


def _npz(rd: RunDir, path: str) -> Any:
    with rd.fs.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()))
