"""emit: the curated set, resharded to ``emit.rows_per_shard``, optionally as WebDataset.

Global but parallel. The driver first counts the kept pairs of every pool shard (cheap: the
last deciding stage's ``kept`` column), which fixes a global row order (pool shard order,
then row order). Output shard j holds global rows [j*R, (j+1)*R); each output shard is one
engine task that gathers its slices — pool columns joined with images, scores, matches and
clusters by uid — and writes ``curated/part-NNNNN.parquet`` (and ``curated/wds/NNNNN.tar``).
The same inputs give the same bytes: rerunning emit rewrites identical files, and a shard
whose inputs did not change is not rewritten at all. ``curated/stats.json`` lists counts.
Pairs matching a takedown rule (``takedown/rules.parquet``, ``curate takedown``) are left
out of the count and of every output shard, on every run; the rules' digest is part of each
output shard's identity, so a new rule rewrites what it touches. The download stage's
configured denylist (``denylist/rules.parquet``, ``download.denylist``) is applied the same
way, so a pair whose image was brought by the pool, or fetched before a rule was added, is
still left out. When a faces stage ran before emit or the pool brought ``face_bboxes``,
every curated image with a face is blurred as DataComp did (``emit.blur_faces``, on by
default; :mod:`curate.stages._emit_faces`), in the Parquet and the tars alike.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.algorithms.uids import wds_keys
from curate.config import Section
from curate.core import faults
from curate.core.io import (
    list_shards,
    read_shard_meta,
    shard_index,
    write_bytes_atomic,
    write_parquet_atomic,
)
from curate.core.rundir import RunDir, count_survivors, uid_digest
from curate.errors import InputError
from curate.stages._denylist import load_all_rules, matched, rules_version
from curate.stages._emit_faces import add_faces_source, blur_rows, pool_has_faces
from curate.stages.base import GlobalStep, Stage


class EmitConfig(Section):
    rows_per_shard: int = Field(10_000, ge=1)
    webdataset: bool = False
    include_embeddings: bool = False
    #: blur the faces a faces stage (or the pool's ``face_bboxes``) found; false: originals
    blur_faces: bool = True


def joins(refs: list[Any], classes: dict[str, Any], embeddings: bool
          ) -> list[tuple[str, list[tuple[str, str]]]]:
    """(folder, [(column, name in the curated row)]) for every earlier stage that joins
    columns into curated rows; a column a previous stage already gave is prefixed with the
    instance name (two score stages: ``clip_score`` and ``score_l14_clip_score``)."""
    seen: set[str] = set()
    out = []
    for ref in refs:
        cols = list(classes[ref.name].joins)
        if ref.kind == "score" and embeddings:
            cols += ["image_emb", "text_emb"]
        if not cols:
            continue
        out.append((ref.folder, joined_names(ref.name, cols, seen)))
    return out


def joined_names(instance: str, cols: list[str], seen: set[str]) -> list[tuple[str, str]]:
    """(column, name in a joined row) for ``instance``'s columns: a name taken before
    (``seen``, updated) is prefixed with the instance's name. The explore app names its
    columns by this rule too, so a curated row and the app agree."""
    named = []
    for c in cols:
        name = c if c not in seen else f"{instance}_{c}"
        seen.add(name)
        named.append((c, name))
    return named


def gather(rd: RunDir, deciding: list[str], sources: list, shard: str,
           download: str | None = None) -> pa.Table:
    """Every column of the kept pairs of one pool shard, in pool order, without the pairs
    a takedown rule matches (``takedown/rules.parquet``: they never reach curated/)."""
    table = rd.survivors(deciding, shard)
    rules = load_all_rules(rd)
    if rules is not None and table.num_rows:
        _, label = matched(rd, rules, shard, download, table["uid"].combine_chunks())
        table = table.filter(pc.is_null(label))
    uids = table["uid"].combine_chunks()
    for folder, cols in sources:
        other = rd.read(folder, shard, ["uid", *[c for c, _ in cols]])
        idx = pc.index_in(uids, value_set=other["uid"].combine_chunks())
        for c, name in cols:
            if c not in other.column_names:
                continue
            if name in table.column_names:  # the stage's value wins over a pool column
                table = table.drop_columns([name])
            table = table.append_column(name, pc.take(other[c].combine_chunks(), idx))
    return table


def write_output(run_url: str, folder: str, deciding: list[str], sources: list,
                 webdataset: bool, job: dict[str, Any], download: str | None = None,
                 blur_faces: bool = True, store_blurred: bool = False) -> dict[str, Any]:
    """One output shard: gather its slices of pool shards, blur the faces (with
    ``blur_faces`` and boxes), write Parquet (+ tar)."""
    rd = RunDir(run_url)
    name = job["name"]
    path = rd.path(folder, name)
    meta = read_shard_meta(rd.fs, path)
    tar_path = rd.path(folder, "wds", name.replace("part-", "").replace(".parquet", ".tar"))
    if meta and meta.get("input") == job["digest"] and (
            not webdataset or rd.fs.exists(tar_path)):
        return {"name": name, "rows": meta["counts"]["rows"], "skipped": True,
                "faces": meta["counts"].get("images_with_faces", 0)}
    parts = [gather(rd, deciding, sources, s, download).slice(lo, hi - lo)
             for s, lo, hi in job["slices"]]
    table, faces = blur_rows(pa.concat_tables(parts, promote_options="permissive"),
                             blur_faces, store_blurred)
    write_parquet_atomic(rd.fs, path, table,
                         meta={"stage": "emit", "input": job["digest"],
                               "counts": {"rows": table.num_rows,
                                          "images_with_faces": faces}})
    if webdataset:
        write_bytes_atomic(rd.fs, tar_path, to_tar(table))
    faults.trace("emit", name)
    return {"name": name, "rows": table.num_rows, "skipped": False, "faces": faces}


def to_tar(table: pa.Table) -> bytes:
    """WebDataset layout: ``{key}.{ext}``, ``{key}.txt``, ``{key}.json`` per pair.

    ``key`` is :func:`curate.algorithms.uids.wds_key` of the uid: the uid itself when it is
    1-64 characters of ``[A-Za-z0-9_-]``, else a sanitised prefix plus a hash, so a member
    name never holds ``/``, ``..``, a leading or second ``.``, and always fits USTAR; the true
    uid is in ``{key}.json`` and in the Parquet. Deterministic bytes (fixed mtime, owner and
    order), so emit is idempotent.
    """
    buf = io.BytesIO()
    skip = {"image", "image_emb", "text_emb"}
    rest_cols = [c for c in table.column_names if c not in skip]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        rows = table.select(rest_cols).to_pylist()
        images = (table["image"].to_pylist() if "image" in table.column_names
                  else [None] * table.num_rows)
        keys = wds_keys(table["uid"])
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise InputError(f"emit: two uids of one output shard map to the WebDataset key "
                             f"{dup!r}; make the pool's uids distinct after sanitising")
        for key, row, img in zip(keys, rows, images):
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
    """Cut the global order of kept rows into output shards of ``rows_per_shard`` rows.

    One pass over the pool shards (each output shard's slices are a contiguous run of them),
    so the plan costs O(pool shards + output shards), not their product."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(starts[-1])
    jobs = []
    i = 0
    for j, lo in enumerate(range(0, total, rows_per_shard)):
        hi = min(lo + rows_per_shard, total)
        while starts[i + 1] <= lo:  # skip pool shards that end before this output starts
            i += 1
        slices, ins = [], []
        k = i
        while k < len(shards) and starts[k] < hi:
            a, b = max(lo, starts[k]), min(hi, starts[k + 1])
            if a < b:
                slices.append((shards[k], int(a - starts[k]), int(b - starts[k])))
                ins.append([shards[k], int(a - starts[k]), int(b - starts[k]), digests[k]])
            k += 1
        jobs.append({"name": f"part-{j:05d}.parquet", "slices": slices,
                     "digest": hashlib.sha256(json.dumps(ins).encode()).hexdigest()[:32]})
    return jobs


class EmitStage(Stage):
    kind = "emit"
    folder = "curated"
    view = "curated"
    per_shard = False
    #: cheap to redo (each output shard whose inputs did not change is left as it is), and
    #: a rerun then restores outputs that were deleted or damaged
    always_rerun = True
    Config = EmitConfig
    help = "Write the curated set: resharded Parquet, WebDataset on request."

    def steps(self) -> list:
        return [GlobalStep("count", plan=lambda: list(self.shards), map=self._count,
                           commit=self._plan),
                GlobalStep("write", plan=self._jobs, map=self._write, commit=self._written)]

    def _out(self) -> str:
        return self.pipeline.ref(self.name).folder

    def _download(self) -> str | None:
        dl = self.previous("download")
        return dl.folder if dl else None

    def _count(self, shard: str) -> tuple[int, str]:
        rules = load_all_rules(self.rd)
        if rules is None:
            return count_survivors(self.rd.url, self.deciding_before(), shard)
        uids = self.rd.survivors(self.deciding_before(), shard, ["uid"])["uid"]
        _, label = matched(self.rd, rules, shard, self._download(), uids.combine_chunks())
        kept = uids.combine_chunks().filter(pc.is_null(label))
        return len(kept), uid_digest(kept)

    def _plan(self, results: list) -> dict[str, Any]:
        """Cut the kept rows into output shards; the plan is a file (O(shards) in size)."""
        order = {s: i for i, s in enumerate(self.shards)}
        results.sort(key=lambda r: order[r[0]])
        shards = [s for s, _ in results]
        counts = [c for _, (c, _) in results]
        digests = [d for _, (_, d) in results]
        # the configuration of the output is part of every output shard's identity
        salt = json.dumps([self.section.model_dump(), [r.name for r in self.before],
                           self.spec.fingerprint, rules_version(self.rd)])
        jobs = plan_outputs(shards, counts, digests, self.section.rows_per_shard)
        for job in jobs:
            job["digest"] = hashlib.sha256((job["digest"] + salt).encode()).hexdigest()[:32]
        path = self.rd.path(self._out(), "_plan.json")
        write_bytes_atomic(self.rd.fs, path, json.dumps(jobs).encode())
        return {"rows": int(sum(counts)), "outputs_planned": len(jobs),
                "plan_digest": hashlib.sha256(json.dumps(jobs).encode()).hexdigest()[:16]}

    def _jobs(self) -> list[dict[str, Any]]:
        with self.rd.fs.open(self.rd.path(self._out(), "_plan.json"), "rb") as f:
            return json.loads(f.read())

    def _write(self, job: dict[str, Any]) -> dict[str, Any]:
        classes = {r.name: self.pipeline.stage_class(r.name) for r in self.before}
        sources = joins(self.before, classes, self.section.include_embeddings)
        faces = self.previous("faces")
        sources = add_faces_source(sources, faces.folder if faces else None)
        return write_output(self.rd.url, self._out(), self.deciding_before(), sources,
                            self.section.webdataset, job, self._download(),
                            self.section.blur_faces, self._store_blurred())

    def _store_blurred(self) -> bool:
        """The faces stage blurred the image store (``faces.blur_store``): emit must not
        blur those images a second time."""
        faces = self.previous("faces")
        return bool(faces and getattr(self.pipeline.section(faces.name), "blur_store", False))

    def _written(self, results: list) -> dict[str, Any]:
        out = self._out()
        jobs = self._jobs()
        names = {j["name"] for j in jobs}
        # a pool that shrank its kept set leaves fewer output shards: drop the stale ones
        for stale in set(list_shards(self.rd.fs, self.rd.path(out))) - names:
            self.rd.fs.rm(self.rd.path(out, stale))
            tar = self.rd.path(out, "wds", f"{shard_index(stale):05d}.tar")
            if self.rd.fs.exists(tar):
                self.rd.fs.rm(tar)
        rows = {r["name"]: r["rows"] for _, r in results}
        total = int(sum(rows.values()))
        stats = {"rows": total, "shards": [{"name": j["name"], "rows": rows[j["name"]]}
                                           for j in jobs],
                 "webdataset": self.section.webdataset}
        write_bytes_atomic(self.rd.fs, self.rd.path(out, "stats.json"),
                           json.dumps(stats, indent=2).encode())
        faults.trace(self.name, "stats.json")
        has_faces = self.previous("faces") is not None or any(
            pool_has_faces(self.rd, s) for s in self.shards[:1])
        faces = int(sum(r.get("faces", 0) for _, r in results))
        return {"counts": {"rows_in": total, "kept": total, "dropped": {}},
                "faces_blurred": bool(has_faces and (self.section.blur_faces
                                                     or self._store_blurred())),
                "images_with_faces": faces,
                "rules_version": rules_version(self.rd),  # what publish checks takedowns by
                "outputs": {"curated shards": f"{self.rd.url}/{out}"}}
