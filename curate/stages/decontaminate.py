"""decontaminate: drop pool pairs whose image is a near-copy of an evaluation image.

``eval_sets: {name: PATH}`` names Parquet files (or folders/globs of them) holding an
``image`` column (encoded bytes) and/or an ``image_emb`` column (CLIP image embeddings of the
same model as the pool's). A pool pair is contaminated when its perceptual hash is within
``radius`` bits of an eval image's, or (both sides with embeddings) its cosine similarity to
one is at least ``threshold``: ``curate.algorithms.contamination``. Dropped with reason
``eval_contamination``; ``detail`` is ``<set>:<row>`` of the eval image it matched (``phash``
or ``emb=<similarity>``). run.json's stage ``global`` counts hits per set.

Steps: ``eval`` (a task per eval file row group: hashes and embeddings into
``decontaminate/_work/<fingerprint>/``), then the shard step (each worker loads the eval side
once; eval sets are small beside the pool), then ``hits`` (counts per set).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curate.algorithms.embeddings import as_matrix
from curate.config import Section
from curate.core.io import join, url_to_fs, write_parquet_atomic
from curate.errors import InputError
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions

_EVAL: dict[str, Any] = {}


class DecontaminateConfig(Section):
    eval_sets: dict[str, str]
    #: Hamming radius on the 64-bit phash; wider than image_dedup's default: a leak costs
    #: more than a lost pair (a 2-pixel crop of a 160x120 image moved 6 bits in the tests)
    radius: int = Field(8, ge=0, le=16)
    #: cosine similarity of image embeddings that counts as the same picture
    threshold: float = Field(0.95, gt=0, le=1)


class DecontaminateStage(Stage):
    kind = "decontaminate"
    folder = "decontaminate"
    view = "decontaminate"
    decides = True
    Config = DecontaminateConfig
    schema = pa.schema([("uid", pa.string()), *DECISION_FIELDS])
    reasons = {"eval_contamination": "the image is a near-copy of an evaluation image "
                                     "(detail: set:row phash, or set:row emb=<cosine>)"}
    pool_columns = ["uid"]
    help = "Drop pairs whose image is a near-copy of an image of an evaluation set."
    doc_sections = ({"eval_sets": {"imagenet": "eval/imagenet/*.parquet"}},)

    def steps(self) -> list:
        return [GlobalStep("eval", plan=self._eval_items, map=self._eval_hash,
                           start=int, fold=lambda a, _i, r: a + r,
                           commit=lambda n: {"eval_images": n, "work": self._work()}),
                ShardStep(),
                GlobalStep("hits", plan=lambda: list(self.shards), map=self._hits,
                           start=dict, fold=_add_hits, commit=lambda h: {"hits": h})]

    def _work(self) -> str:
        return join(self.rd.path(self.pipeline.ref(self.name).folder), "_work",
                    self.spec.fingerprint)

    def preflight(self) -> list[str]:
        """Every eval set's files, each with an image or image_emb column (footers only),
        and the pool's side: images or embeddings to compare."""
        from curate.errors import CurateError
        from curate.stages import _needs
        from curate.stages.ingest import resolve_pool

        problems = []
        if _needs.images(self, instead=("image_emb",)) and _needs.image_embeddings(self):
            problems.append(f"{self.name}: needs images or image embeddings of the pool: no "
                            "download or score stage runs before it and the pool has neither "
                            "an image nor an image_emb column")
        for name, spec in sorted(self.section.eval_sets.items()):
            key = f"{self.name}.eval_sets.{name}"
            try:
                fs, files = resolve_pool(spec)
                for path in files:
                    with fs.open(path, "rb") as f:
                        if not {"image", "image_emb"} & set(pq.read_schema(f).names):
                            problems.append(f"{key}: {path} has neither an image nor an "
                                            "image_emb column")
            except CurateError as err:  # its message says "pool ...": it is an eval set
                problems.append(f"{key}: {str(err).removeprefix('pool ')}")
            except (OSError, pa.ArrowInvalid) as err:
                problems.append(f"{key}: {spec} is not readable Parquet ({err})")
        return problems

    # ------------------------------------------------------------------ eval side
    def _eval_items(self) -> list[tuple[str, str, int]]:
        items = []
        for name, spec in sorted(self.section.eval_sets.items()):
            from curate.stages.ingest import resolve_pool

            fs, files = resolve_pool(spec)
            for path in files:
                with fs.open(path, "rb") as f:
                    pf = pq.ParquetFile(f)
                    if not {"image", "image_emb"} & set(pf.schema_arrow.names):
                        raise InputError(f"decontaminate.eval_sets.{name}: {path} has neither "
                                         "an image nor an image_emb column")
                    items += [(name, path, rg) for rg in range(pf.num_row_groups)]
        return items

    def _eval_hash(self, item: tuple[str, str, int]) -> int:
        from curate.media.imagehashes import image_hashes

        name, path, rg = item
        fs, p = url_to_fs(path)
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in ("image", "image_emb") if c in pf.schema_arrow.names]
            t = pf.read_row_group(rg, columns=cols)
            first = sum(pf.metadata.row_group(i).num_rows for i in range(rg))
        n = t.num_rows
        h = np.zeros(n, np.uint64)
        ok = np.zeros(n, bool)
        if "image" in cols:
            for i, data in enumerate(t["image"].to_pylist()):
                if data is not None:
                    _, _, p_hash = image_hashes(data)
                    if p_hash is not None:
                        h[i], ok[i] = p_hash, True
        out = {"set": pa.array([name] * n, pa.string()),
               "row": pa.array(np.arange(first, first + n), pa.int64()),
               "h": pa.array(h), "has_h": pa.array(ok)}
        if "image_emb" in cols:
            out["image_emb"] = t["image_emb"].cast(pa.list_(pa.float32()))
        write_parquet_atomic(self.rd.fs, join(self._work(), f"eval-{name}-{rg:05d}.parquet"),
                             pa.table(out))
        return n

    def _eval_side(self) -> dict[str, Any]:
        work = self.state["eval"]["work"]
        if work not in _EVAL:
            fs = self.rd.fs
            tables = []
            for path in sorted(fs.glob(join(work, "eval-*.parquet"))):
                with fs.open(path, "rb") as f:
                    tables.append(pq.read_table(f))
            t = pa.concat_tables(tables, promote_options="permissive")
            label = pc.binary_join_element_wise(t["set"], pc.cast(t["row"], pa.string()), ":")
            has_h = t["has_h"].to_numpy(zero_copy_only=False)
            side: dict[str, Any] = {"label": label, "set": t["set"],
                                    "h": t["h"].to_numpy()[has_h],
                                    "h_rows": np.flatnonzero(has_h)}
            if "image_emb" in t.column_names:
                emb = t["image_emb"].combine_chunks()
                rows = np.flatnonzero(pc.is_valid(emb).to_numpy(zero_copy_only=False))

                side["x"] = as_matrix(emb.take(pa.array(rows))) if rows.size else None
                side["x_rows"] = rows
            _EVAL.clear()
            _EVAL[work] = side
        return _EVAL[work]

    # ------------------------------------------------------------------ pool side
    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.algorithms.contamination import embedding_hits, near_any
        from curate.media.imagehashes import image_hashes

        ev = self._eval_side()
        surv = self.survivors(shard, None)
        uids = surv["uid"].combine_chunks()
        n = len(uids)
        hit = np.zeros(n, bool)
        detail = np.full(n, None, object)
        images = self._images(shard, surv)
        if images is not None and len(ev["h"]):
            h = np.zeros(n, np.uint64)
            ok = np.zeros(n, bool)
            for i, data in enumerate(images.to_pylist()):
                if data is not None:
                    _, _, p_hash = image_hashes(data)
                    if p_hash is not None:
                        h[i], ok[i] = p_hash, True
            rows = np.flatnonzero(ok)
            found, which = near_any(h[rows], ev["h"], self.section.radius)
            for r, e in zip(rows[found], which[found]):
                hit[r] = True
                detail[r] = f"{ev['label'][int(ev['h_rows'][e])].as_py()} phash"
        x = self._embeddings(shard, surv)
        if x is not None and ev.get("x") is not None:
            if x.shape[1] != ev["x"].shape[1]:
                raise InputError(f"{self.name}: the pool's image embeddings are "
                                 f"{x.shape[1]}-d but an eval set's are {ev['x'].shape[1]}-d: "
                                 "embed both with the same model")
            found, which, sim = embedding_hits(x, ev["x"], self.section.threshold)
            for r in np.flatnonzero(found & ~hit):
                hit[r] = True
                label = ev["label"][int(ev["x_rows"][which[r]])].as_py()
                detail[r] = f"{label} emb={sim[r]:.3f}"
        return pa.table({"uid": uids, **decisions(pa.array(~hit), pa.array(
            ["eval_contamination"] * n, pa.string()), pa.array(detail.tolist(), pa.string()))})

    def _images(self, shard: str, surv: pa.Table) -> pa.Array | None:
        dl = self.previous("download")
        if dl is not None:
            return self.rd.column_for(dl.folder, shard, surv["uid"], "image")
        return surv["image"].combine_chunks() if "image" in surv.column_names else None

    def _embeddings(self, shard: str, surv: pa.Table) -> np.ndarray | None:

        score = self.previous("score")
        if score is not None:
            col = self.rd.column_for(score.folder, shard, surv["uid"], "image_emb")
        elif "image_emb" in surv.column_names:
            col = surv["image_emb"].combine_chunks()
        else:
            return None
        return as_matrix(col) if len(col) and not col.null_count else None

    def _hits(self, shard: str) -> dict[str, int]:
        t = self.rd.read(self.pipeline.ref(self.name).folder, shard, ["kept", "detail"])
        d = t.filter(pc.invert(pc.fill_null(t["kept"], True)))["detail"].to_pylist()
        out: dict[str, int] = {}
        for s in d:
            key = s.split(":", 1)[0]
            out[key] = out.get(key, 0) + 1
        return out


def _add_hits(acc: dict[str, int], _item: str, r: dict[str, int]) -> dict[str, int]:
    for k, v in r.items():
        acc[k] = acc.get(k, 0) + v
    return acc
