"""image_dedup: the same image under many URLs, re-encoded or resized copies, placeholders.

CLIP-embedding dedup (prune's SemDeDup) needs a model and misses what users hit first. This
stage works on the images themselves (``curate.media.imagehashes``: bytes, decoded pixels,
64-bit perceptual hash) and decides with ``curate.algorithms.image_dedup``'s rule: a pair
is dropped when a pair with a smaller uid-hash order has the same bytes
(``duplicate_image_bytes``), the same pixels (``duplicate_image_pixels``) or a perceptual
hash within ``radius`` bits (``near_duplicate_image``); ``detail`` names that pair's uid.
Groups of equal hashes served by at least ``placeholder_hosts`` hosts for as many distinct
captions are placeholders: every member is dropped (``placeholder_image``).

Steps, so no task holds more than one partition of the pool's hashes:

1. ``hash`` (a task per shard): each surviving pair's hashes, written to
   ``image_dedup/_work/<fingerprint>/hash-part-N.parquet`` once per route: by bytes hash,
   by pixel hash and by each perceptual band's value, with its partition ``p``, sorted by
   ``p`` (a partition task reads only its row groups).
2. ``dedup`` (a task per partition): the partition's records from every shard, grouped;
   writes the flagged pairs (uid, code, duplicate's uid, their shard) to ``flags-pJJJJ``.
3. the shard step: each shard's flags from every partition (best code wins), as decisions.
4. ``cleanup``: the work folder goes.

Images: the download stage's ``image`` column, else the pool's. Pairs whose image does not
decode keep the bytes test only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curate.algorithms import image_dedup as alg
from curate.algorithms.uids import uid_keys
from curate.config import Section
from curate.core.io import join, write_parquet_atomic
from curate.errors import InputError
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions

#: routed hash records per dedup task when partitions are automatic (~20 MB of records)
PARTITION_RECORDS = 200_000

CODES = ("placeholder_image", "duplicate_image_bytes", "duplicate_image_pixels",
         "near_duplicate_image")


class ImageDedupConfig(Section):
    #: Hamming radius of "near" on the 64-bit perceptual hash (imagehash's phash)
    radius: int = Field(4, ge=0, le=16)
    near: bool = True
    #: a hash group served by this many hosts for as many distinct captions is a
    #: placeholder (null: off). Widely reposted images (memes, stock photos) can meet it
    #: too: the count says "many", not "unrelated"; raise it for pools full of reposts
    placeholder_hosts: int | None = Field(10, ge=2)
    #: hash partitions (one dedup task each); null: one per ~200k routed records of the
    #: pool, so a task's memory stays the same as the pool grows
    partitions: int | None = Field(None, ge=1, le=65536)


class ImageDedupStage(Stage):
    kind = "image_dedup"
    folder = "image_dedup"
    view = "image_dedup"
    decides = True
    Config = ImageDedupConfig
    schema = pa.schema([("uid", pa.string()), *DECISION_FIELDS])
    reasons = {
        "placeholder_image": "the same image (bytes, pixels or perceptual hash) served by "
                             "image_dedup.placeholder_hosts hosts or more for as many "
                             "captions: every member dropped",
        "duplicate_image_bytes": "same image file as an earlier pair (detail: its uid)",
        "duplicate_image_pixels": "same decoded pixels as an earlier pair (detail: its uid)",
        "near_duplicate_image": "perceptual hash within image_dedup.radius bits of an earlier "
                                "pair's (detail: its uid)",
    }
    pool_columns = ["uid"]
    help = "Exact and near-duplicate images and placeholders, from image hashes (no model)."

    def steps(self) -> list:
        return [GlobalStep("hash", plan=lambda: list(self.shards), map=self._hash,
                           start=int, fold=lambda a, _i, r: a + r,
                           commit=lambda n: {"records": n, "work": self._work()}),
                GlobalStep("dedup", plan=lambda: list(range(self._partitions())),
                           map=self._dedup, start=lambda: {"flagged": 0, "groups": []},
                           fold=_add_flags, commit=lambda acc: acc),
                ShardStep(), GlobalStep.on_driver("cleanup", self._cleanup)]

    def _partitions(self) -> int:
        """Fixed before hashing (records are routed by it): the config's, or from the pool's
        row count (an upper bound on the pairs that reach this stage)."""
        if self.section.partitions:
            return self.section.partitions
        routes = 2 + (self.section.radius + 1 if self.section.near else 0)
        rows = int(self.rd.load_manifest().get("pool", {}).get("rows", 0) or 0)
        return max(1, -(-rows * routes // PARTITION_RECORDS))

    def _work(self) -> str:
        return join(self.rd.path(self.name if self.name != self.kind else self.folder),
                    "_work", self.spec.fingerprint)

    def preflight(self) -> list[str]:
        """Images to hash: the download stage's, else the pool's."""
        from curate.stages._needs import images

        return images(self)

    # ------------------------------------------------------------------ 1. hash
    def _images(self, shard: str) -> pa.Table:
        surv = self.survivors(shard, None)
        dl = self.previous("download")
        if dl is not None:
            images = self.rd.column_for(dl.folder, shard, surv["uid"], "image")
        elif "image" in surv.column_names:
            images = surv["image"].combine_chunks()
        else:
            raise InputError(f"{self.name}: needs images: run download before it or bring an "
                             "image column in the pool (pool.columns.image)")
        url = (surv["url"] if "url" in surv.column_names
               else pa.nulls(surv.num_rows, pa.string()))
        host = pc.extract_regex(pc.fill_null(url, ""), r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?"
                                r"(?P<host>[^/:?#]*)")
        return pa.table({"uid": surv["uid"].combine_chunks(), "image": images,
                         "host": pc.utf8_lower(pc.struct_field(host, "host")),
                         "caption": pc.fill_null(surv["caption"], "")})

    def _hash(self, shard: str) -> int:
        from curate.media.imagehashes import image_hashes

        t = self._images(shard)
        n = t.num_rows
        b = np.zeros(n, np.uint64)
        x = np.zeros(n, np.uint64)
        h = np.zeros(n, np.uint64)
        ok_x, ok_h = np.zeros(n, bool), np.zeros(n, bool)
        for i, data in enumerate(t["image"].to_pylist()):
            if data is None:
                continue
            bi, xi, hi = image_hashes(data)
            b[i] = bi
            if xi is not None:
                x[i], h[i], ok_x[i], ok_h[i] = xi, hi, True, True
        has = pc.is_valid(t["image"]).to_numpy(zero_copy_only=False)
        order = uid_keys(t["uid"])
        host, cap = uid_keys(t["host"]), uid_keys(t["caption"])
        s, parts, n_parts = self.section, [], self._partitions()

        def add(kind: int, rows: np.ndarray, key: np.ndarray, salt: int) -> None:
            parts.append(pa.table({
                "p": pa.array(alg.route(key[rows], salt, n_parts), pa.int32()),
                "kind": pa.array(np.full(rows.size, kind, np.int8)),
                "key": key[rows], "o": order[rows], "h": h[rows], "host": host[rows],
                "cap": cap[rows], "uid": t["uid"].take(pa.array(rows)),
                "shard": pa.array([shard] * rows.size, pa.string())}))

        add(alg.BYTES, np.flatnonzero(has), b, 0)
        add(alg.PIXELS, np.flatnonzero(ok_x), x, 1)
        if s.near:
            for j, vals in enumerate(alg.band_values(h, s.radius)):
                add(alg.BAND0 + j, np.flatnonzero(ok_h), vals, 2 + j)
        out = pa.concat_tables(parts).sort_by([("p", "ascending"), ("kind", "ascending")])
        write_parquet_atomic(self.rd.fs, join(self._work(), f"hash-{shard}"), out,
                             row_group_size=4096)
        return out.num_rows

    # ------------------------------------------------------------------ 2. dedup
    def _dedup(self, j: int) -> dict[str, Any]:
        fs, work = self.rd.fs, self.state["hash"]["work"]
        self._groups: list[list] = []
        tables = []  # every shard's hash file (workers rebuild the stage: no shard list)
        for path in sorted(fs.glob(join(work, "hash-*"))):
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, filters=[("p", "=", j)]))
        t = pa.concat_tables(tables) if tables else None
        flags: list[pa.Table] = []
        if t is not None and t.num_rows:
            kind = t["kind"].to_numpy()
            for k in np.unique(kind):
                sub = t.filter(pa.array(kind == k))
                flags += self._flag(int(k), sub)
        out = (pa.concat_tables(flags).sort_by("shard") if flags else
               pa.table({"uid": pa.array([], pa.string()), "code": pa.array([], pa.int8()),
                         "dup": pa.array([], pa.string()), "shard": pa.array([], pa.string())}))
        write_parquet_atomic(fs, join(work, f"flags-p{j:04d}.parquet"), out,
                             row_group_size=4096)
        return {"flagged": out.num_rows, "groups": _top_groups(self._groups)}

    def _flag(self, kind: int, t: pa.Table) -> list[pa.Table]:
        s = self.section
        o, key = t["o"].to_numpy(), t["key"].to_numpy()
        uid = t["uid"].combine_chunks()
        out = []

        def emit(mask: np.ndarray, code: int, dup: pa.Array | None) -> None:
            rows = pa.array(np.flatnonzero(mask))
            out.append(pa.table({
                "uid": uid.take(rows), "code": pa.array(np.full(len(rows), code, np.int8)),
                "dup": dup.take(rows) if dup is not None else pa.nulls(len(rows), pa.string()),
                "shard": t["shard"].combine_chunks().take(rows)}))

        if kind in (alg.BYTES, alg.PIXELS):
            dup, win = alg.exact(o, key)
            emit(dup, alg.DUP_BYTES if kind == alg.BYTES else alg.DUP_PIXELS,
                 uid.take(pa.array(win)))
        else:
            dup, win = alg.near(o, t["h"].to_numpy(), key, s.radius)
            emit(dup, alg.DUP_NEAR, uid.take(pa.array(win)))
        if s.placeholder_hosts and kind in (alg.BYTES, alg.PIXELS, alg.BAND0):
            group = key if kind != alg.BAND0 else t["h"].to_numpy()
            mask = alg.placeholders(group, t["host"].to_numpy(), t["cap"].to_numpy(),
                                    s.placeholder_hosts)
            emit(mask, alg.PLACEHOLDER, None)
            self._groups += _groups(t.filter(pa.array(mask)), group[mask])
        return out

    # ------------------------------------------------------------------ 3. decisions
    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        fs, work = self.rd.fs, self.state["hash"]["work"]
        parts = []
        for j in range(self._partitions()):
            with fs.open(join(work, f"flags-p{j:04d}.parquet"), "rb") as f:
                parts.append(pq.read_table(f, filters=[("shard", "=", shard)],
                                           columns=["uid", "code", "dup"]))
        uids = inputs["uid"].combine_chunks()
        # index_in finds a uid's first flag: sorted so that is the lowest code (then dup)
        flags = pa.concat_tables(parts).sort_by([("code", "ascending"), ("dup", "ascending")])
        at = pc.index_in(uids, value_set=flags["uid"].combine_chunks())
        code = pc.take(flags["code"].combine_chunks(), at)
        reason = pc.take(pa.array(CODES, pa.string()), pc.fill_null(code, 0))
        kept = pc.is_null(code)
        return pa.table({"uid": uids, **decisions(kept, reason,
                                                  pc.take(flags["dup"].combine_chunks(), at))})

    def _cleanup(self, _: Any) -> dict[str, Any]:
        """Drop the per-shard hash files; keep the small flag files a rerun of the shard
        step reads."""
        work = self.state["hash"]["work"]
        fs = self.rd.fs
        for path in fs.glob(join(work, "hash-*")) if fs.exists(work) else []:
            fs.rm(path)
        return {}


#: placeholder groups kept for the report (the largest)
TOP_GROUPS = 10


def _groups(t: pa.Table, key: np.ndarray) -> list[list]:
    """[pairs, hosts, earliest member's uid, its shard] per placeholder group of ``t``."""
    if not t.num_rows:
        return []
    _, g, size = np.unique(key, return_inverse=True, return_counts=True)
    order = np.lexsort((t["o"].to_numpy(), g))
    first = order[np.r_[True, g[order][1:] != g[order][:-1]]]
    hosts = np.unique(np.stack([g.astype(np.uint64), t["host"].to_numpy()]), axis=1)[0]
    n_hosts = np.bincount(hosts.astype(np.int64), minlength=size.size)
    uid, shard = t["uid"].to_pylist(), t["shard"].to_pylist()
    return [[int(size[g[i]]), int(n_hosts[g[i]]), uid[i], shard[i]] for i in first]


def _top_groups(groups: list[list]) -> list[list]:
    """The largest groups, one entry per example uid (a group seen through bytes, pixels and
    phash is one group)."""
    best: dict[str, list] = {}
    for grp in groups:
        if grp[2] not in best or grp[0] > best[grp[2]][0]:
            best[grp[2]] = grp
    return sorted(best.values(), key=lambda x: (-x[0], x[2]))[:TOP_GROUPS]


def _add_flags(acc: dict[str, Any], _item: Any, r: dict[str, Any]) -> dict[str, Any]:
    return {"flagged": acc["flagged"] + r["flagged"],
            "groups": _top_groups(acc["groups"] + r["groups"])}
