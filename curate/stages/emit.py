"""emit: the curated set, resharded to ``emit.rows_per_shard``, optionally as WebDataset.

Global but parallel. The driver first counts the kept pairs of every pool shard (cheap: the
last deciding stage's ``kept`` column), which fixes a global row order (pool shard order,
then row order). Output shard j holds global rows [j*R, (j+1)*R); each output shard is one
engine task that gathers its slices — pool columns joined with images, scores, matches and
clusters by uid — and writes ``curated/part-NNNNN.parquet`` (and ``curated/wds/NNNNN.tar``).
The same inputs give the same bytes: rerunning emit rewrites identical files, and a shard
whose inputs did not change is not rewritten at all. ``curated/stats.json`` lists counts.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import engine, faults
from curate.core.io import list_shards, read_shard_meta, write_bytes_atomic, write_parquet_atomic
from curate.core.rundir import RunDir, count_survivors
from curate.stages.base import Stage

#: stage -> (folder, columns it contributes to a curated row)
JOINS = {
    "download": ("images", ["image", "format", "width", "height", "sha256"]),
    "score": ("scores", ["clip_score"]),
    "match": ("match", ["entry_ids"]),
    "prune": ("prune", ["cluster_id"]),
}


def gather(rd: RunDir, stages_before: list[str], shard: str, embeddings: bool) -> pa.Table:
    """Every column of the kept pairs of one pool shard, in pool order."""
    table = rd.survivors(stages_before, shard)
    uids = table["uid"].combine_chunks()
    for stage in stages_before:
        if stage not in JOINS:
            continue
        folder, cols = JOINS[stage]
        if stage == "score" and embeddings:
            cols = cols + ["image_emb", "text_emb"]
        other = rd.read(folder, shard, ["uid", *cols])
        idx = pc.index_in(uids, value_set=other["uid"].combine_chunks())
        for c in cols:
            if c in other.column_names and c not in table.column_names:
                table = table.append_column(c, pc.take(other[c].combine_chunks(), idx))
    return table


def write_output(run_url: str, before: list[str], embeddings: bool, webdataset: bool,
                 job: dict[str, Any]) -> dict[str, Any]:
    """One output shard: gather its slices of pool shards, write Parquet (+ tar)."""
    rd = RunDir(run_url)
    name = job["name"]
    path = rd.path("curated", name)
    meta = read_shard_meta(rd.fs, path)
    tar_path = rd.path("curated", "wds", name.replace("part-", "").replace(".parquet", ".tar"))
    if meta and meta.get("input") == job["digest"] and (
            not webdataset or rd.fs.exists(tar_path)):
        return {"name": name, "rows": meta["counts"]["rows"], "skipped": True}
    faults.maybe_fail("emit", name)
    parts = [gather(rd, before, s, embeddings).slice(lo, hi - lo)
             for s, lo, hi in job["slices"]]
    table = pa.concat_tables(parts, promote_options="permissive")
    write_parquet_atomic(rd.fs, path, table,
                         meta={"stage": "emit", "input": job["digest"],
                               "counts": {"rows": table.num_rows}})
    if webdataset:
        write_bytes_atomic(rd.fs, tar_path, to_tar(table))
    faults.trace("emit", name)
    return {"name": name, "rows": table.num_rows, "skipped": False}


def to_tar(table: pa.Table) -> bytes:
    """WebDataset layout: ``{uid}.{ext}``, ``{uid}.txt``, ``{uid}.json`` per pair.

    Deterministic bytes (fixed mtime, owner and order), so emit is idempotent.
    """
    buf = io.BytesIO()
    skip = {"image", "image_emb", "text_emb"}
    rest_cols = [c for c in table.column_names if c not in skip]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        rows = table.select(rest_cols).to_pylist()
        images = (table["image"].to_pylist() if "image" in table.column_names
                  else [None] * table.num_rows)
        for row, img in zip(rows, images):
            key = row["uid"]
            members = []
            if img is not None:
                members.append((f"{key}.{row.get('format') or 'jpg'}", img))
            members.append((f"{key}.txt", (row.get("caption") or "").encode()))
            members.append((f"{key}.json", json.dumps(row, sort_keys=True, default=str)
                            .encode()))
            for mname, data in members:
                info = tarfile.TarInfo(mname)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def plan_outputs(shards: list[str], counts: list[int], digests: list[str], rows_per_shard: int
                 ) -> list[dict[str, Any]]:
    """Cut the global order of kept rows into output shards of ``rows_per_shard`` rows."""
    starts = np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    jobs = []
    for j, lo in enumerate(range(0, total, rows_per_shard)):
        hi = min(lo + rows_per_shard, total)
        slices = []
        for i, s in enumerate(shards):
            a, b = max(lo, starts[i]), min(hi, starts[i + 1])
            if a < b:
                slices.append((s, int(a - starts[i]), int(b - starts[i])))
        ins = json.dumps([[s, lo_, hi_, digests[shards.index(s)]] for s, lo_, hi_ in slices])
        jobs.append({"name": f"part-{j:05d}.parquet", "slices": slices,
                     "digest": hashlib.sha256(ins.encode()).hexdigest()[:32]})
    return jobs


class EmitStage(Stage):
    name = "emit"
    per_shard = False

    def run_global(self, shards: list[str]) -> dict[str, Any]:
        section = self.section
        before = self.before  # with no deciding stage before it, the whole pool is emitted
        outs = engine.map_items(partial(count_survivors, self.rd.url, before), shards,
                                max_retries=self.cfg.run.max_retries,
                                timeout_s=self.cfg.run.shard_timeout_s, desc="emit: count")
        failed = [o for o in outs if not o.ok]
        if failed:
            raise RuntimeError(f"emit: counting failed on {failed[0].item}: {failed[0].error}")
        counts = [o.value[0] for o in outs]
        digests = [o.value[1] for o in outs]
        # the configuration of the output is part of every output shard's identity
        salt = json.dumps([section.model_dump(), before, self.spec.fingerprint])
        jobs = plan_outputs(shards, counts, digests, section.rows_per_shard)
        for job in jobs:
            job["digest"] = hashlib.sha256((job["digest"] + salt).encode()).hexdigest()[:32]
        results = engine.map_items(
            partial(write_output, self.rd.url, before, section.include_embeddings,
                    section.webdataset), jobs,
            max_retries=self.cfg.run.max_retries, timeout_s=self.cfg.run.shard_timeout_s,
            desc="emit")
        bad = [o for o in results if not o.ok]
        if bad:
            raise RuntimeError(f"emit: writing {bad[0].item['name']} failed: {bad[0].error}")
        names = {j["name"] for j in jobs}
        # a pool that shrank its kept set leaves fewer output shards: drop the stale ones
        for stale in set(list_shards(self.rd.fs, self.rd.path("curated"))) - names:
            self.rd.fs.rm(self.rd.path("curated", stale))
            tar = self.rd.path("curated", "wds", stale[5:10] + ".tar")
            if self.rd.fs.exists(tar):
                self.rd.fs.rm(tar)
        stats = {"rows": int(sum(counts)), "shards": [
            {"name": o.value["name"], "rows": o.value["rows"]} for o in results],
            "webdataset": section.webdataset}
        write_bytes_atomic(self.rd.fs, self.rd.path("curated", "stats.json"),
                           json.dumps(stats, indent=2).encode())
        return {"rows_in": int(sum(counts)), "kept": int(sum(counts)), "dropped": {},
                "outputs": {"curated shards": f"{self.rd.url}/curated"}}
