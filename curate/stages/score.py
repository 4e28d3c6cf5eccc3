"""score: open_clip embeddings and the CLIP score of every surviving pair, then filters.

Per shard, on long-lived actors (one per GPU with ``num_gpus=1``, else CPU actors sized to
the cores) so the model loads once per actor: DataComp's basic filters first (caption
words/characters, image side, aspect ratio; each its own drop reason, no model time spent on
them), then images decode and preprocess on a thread pool inside the actor while the model
encodes batches of ``score.batch_size``. Output ``scores/part-NNNNN.parquet``: uid,
clip_score (float32 cosine of the normalised embeddings), image_emb and text_emb
(``fixed_size_list<float16>[D]``), kept, reason. A pool that brings ``image_emb`` and
``text_emb`` is scored from them without a model.

Filters: ``min_score`` is applied per shard. ``top_fraction`` is DataComp's global quantile:
after every shard is scored, ``finalize`` finds the k-th best score over the whole pool
(k = round(fraction x scored pairs); ties at the boundary broken by uid, ascending, so
exactly k pairs are kept) and rewrites each shard's ``kept`` column.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import engine
from curate.core.engine import Resources
from curate.core.io import read_shard_meta, write_parquet_atomic
from curate.stages.base import Stage

log = logging.getLogger(__name__)

_MODEL: dict[str, Any] = {}


def fp16_list(x: np.ndarray) -> pa.FixedSizeListArray:
    """float32 [n, D] -> Arrow fixed_size_list<float16>[D] (half the bytes, ~1e-3 error)."""
    x16 = np.ascontiguousarray(x, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(x16.reshape(-1)), x16.shape[1])


def as_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """list or fixed_size_list column of floats -> float32 [n, D]."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, 0), np.float32)


def basic_reasons(captions: list[str], width: np.ndarray, height: np.ndarray,
                  cfg: Any) -> list[str | None]:
    """DataComp's basic filtering, one drop reason per pair (None: passes)."""
    out: list[str | None] = []
    for cap, w, h in zip(captions, width, height):
        cap = cap or ""
        if cfg.min_caption_words and len(cap.split()) < cfg.min_caption_words:
            out.append(f"caption has fewer than {cfg.min_caption_words} words")
        elif cfg.min_caption_chars and len(cap) < cfg.min_caption_chars:
            out.append(f"caption has fewer than {cfg.min_caption_chars} characters")
        elif cfg.min_image_side and w > 0 and min(w, h) < cfg.min_image_side:
            out.append(f"image side below {cfg.min_image_side} px")
        elif cfg.max_aspect_ratio and w > 0 and max(w, h) / max(min(w, h), 1) > \
                cfg.max_aspect_ratio:
            out.append(f"aspect ratio above {cfg.max_aspect_ratio:g}")
        else:
            out.append(None)
    return out


class ScoreStage(Stage):
    name = "score"
    pool_columns = None

    # -- driver side
    def _gpus(self) -> int:
        if self.section.device == "cpu":
            return 0
        return engine.cluster_gpus()

    def resources(self) -> Resources:
        gpus = self._gpus()
        cpus = engine.cluster_cpus()
        if gpus:
            return Resources(num_cpus=max(1, cpus // gpus), num_gpus=1)
        per = max(1, cpus // self.num_actors())
        return Resources(num_cpus=per)

    def num_actors(self) -> int:
        gpus = self._gpus()
        if gpus:
            return gpus
        return self.section.num_actors or max(1, min(engine.cluster_cpus(), 4) // 2)

    def prepare(self, shards: list[str]) -> dict[str, Any]:
        """Fail fast on weights that cannot be had, on the driver, before any actor starts."""
        # loading on the driver proves the weights exist (cached) and fit the model, and
        # fails in seconds with one line when they cannot be had, before any actor starts
        _load(self._spec(device="cpu"))
        return {"random_init": self.section.pretrained == "none"}

    def _spec(self, device: str | None = None):
        from curate.models.clip import ModelSpec

        s = self.section
        model = s.model or (None if s.model_config_path else "ViT-B-32")
        return ModelSpec(model=model, pretrained=s.pretrained, model_config=s.model_config_path,
                         device=device or s.device, precision=s.precision)

    # -- worker side
    def setup(self) -> None:
        import torch

        torch.set_num_threads(_assigned_cpus())
        self._model()  # once per actor, before its first shard (not inside a shard's time)

    def _model(self):

        key = self.spec.fingerprint
        if key not in _MODEL:
            _MODEL.clear()
            _MODEL[key] = _load(self._spec())
        return _MODEL[key]

    def inputs(self, shard: str) -> pa.Table:
        t = self.rd.survivors(self.before, shard)
        if "download" in self.before:
            img = self.rd.read("download", shard, ["uid", "image", "width", "height"])
            idx = pc.index_in(t["uid"].combine_chunks(), value_set=img["uid"].combine_chunks())
            for c in ("image", "width", "height"):
                if c in t.column_names:
                    t = t.drop_columns([c])
                t = t.append_column(c, pc.take(img[c].combine_chunks(), idx))
        return t

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        s = self.section
        n = inputs.num_rows
        uids = inputs["uid"].combine_chunks()
        captions = inputs["caption"].to_pylist()
        w = (inputs["width"].to_numpy(zero_copy_only=False) if "width" in inputs.column_names
             else np.zeros(n))
        h = (inputs["height"].to_numpy(zero_copy_only=False) if "height" in inputs.column_names
             else np.zeros(n))
        reasons = basic_reasons(captions, np.nan_to_num(w), np.nan_to_num(h), s.basic)
        todo = np.array([r is None for r in reasons], bool)
        scores = np.full(n, np.nan, np.float32)
        img_emb: np.ndarray | None = None
        txt_emb: np.ndarray | None = None
        brought = {"image_emb", "text_emb"} <= set(inputs.column_names)
        if brought:
            img_emb = _normalise(as_matrix(inputs["image_emb"]))
            txt_emb = _normalise(as_matrix(inputs["text_emb"]))
            scores[todo] = np.einsum("ij,ij->i", img_emb[todo], txt_emb[todo])
        elif todo.any():
            img_emb, txt_emb, scores, errs = self._encode(inputs, todo, captions)
            for i, e in enumerate(errs):
                if e is not None:
                    reasons[i] = e
        if s.filter.min_score is not None:
            for i in np.flatnonzero(scores < s.filter.min_score):
                if reasons[i] is None:
                    reasons[i] = (f"below score threshold: {scores[i]:.4f} < "
                                  f"{s.filter.min_score:g}")
        kept = np.array([r is None for r in reasons], bool)
        d = img_emb.shape[1] if img_emb is not None else self._embed_dim()
        if img_emb is None:
            img_emb = txt_emb = np.zeros((n, d), np.float32)
        scored = ~np.isnan(scores)
        return pa.table({
            "uid": uids,
            "clip_score": pa.array(scores, pa.float32(), mask=~scored),
            "image_emb": _with_nulls(fp16_list(img_emb), scored),
            "text_emb": _with_nulls(fp16_list(txt_emb), scored),
            "kept": pa.array(kept),
            "reason": pa.array(reasons, pa.string()),
        })

    def _embed_dim(self) -> int:
        return self._model().embed_dim

    def _encode(self, inputs: pa.Table, todo: np.ndarray, captions: list[str | None]):
        """Decode (threads) and encode (model) the pairs in ``todo``, batch by batch."""
        import torch

        from curate.models.clip import encode, preprocess_images

        loaded = self._model()
        n = inputs.num_rows
        images = inputs["image"].to_pylist() if "image" in inputs.column_names else [None] * n
        idx = np.flatnonzero(todo)
        d = loaded.embed_dim
        img_emb = np.zeros((n, d), np.float32)
        txt_emb = np.zeros((n, d), np.float32)
        scores = np.full(n, np.nan, np.float32)
        errs: list[str | None] = [None] * n
        bs = self.section.batch_size
        # half the cores decode the next batch while torch encodes this one
        workers = max(1, _assigned_cpus() // 2)
        sub = max(1, math.ceil(bs / workers))

        def prep(rows: np.ndarray):
            return rows, preprocess_images([images[i] for i in rows], loaded.preprocess)

        batches = [idx[i:i + bs] for i in range(0, len(idx), bs)]
        with ThreadPoolExecutor(workers) as pool:
            # decode the next batch on the thread pool while the model encodes this one
            def submit(batch: np.ndarray):
                return [pool.submit(prep, batch[j:j + sub]) for j in range(0, len(batch), sub)]

            ahead = submit(batches[0]) if batches else []
            for b in range(len(batches)):
                parts = [f.result() for f in ahead]
                ahead = submit(batches[b + 1]) if b + 1 < len(batches) else []
                tensors, goods = [], []
                for rows, (tensor, ok, perr) in parts:
                    for j, e in enumerate(perr):
                        if e is not None:
                            errs[rows[j]] = e
                    if len(rows[ok]):
                        tensors.append(tensor)
                        goods.append(rows[ok])
                if not goods:
                    continue
                # one model call per batch_size pairs, however many threads decoded it
                good = np.concatenate(goods)
                ie, te, sc = encode(loaded, torch.cat(tensors), [captions[i] for i in good])
                img_emb[good], txt_emb[good], scores[good] = ie, te, sc
        return img_emb, txt_emb, scores, errs

    # -- global filter
    def finalize(self, shards: list[str]) -> dict[str, Any]:
        frac = self.section.filter.top_fraction
        if frac is None:
            return {}
        outs = engine.map_items(partial(_shard_scores, self.rd.url), shards,
                                max_retries=self.cfg.run.max_retries, desc="score: quantile")
        scores = np.concatenate([o.value[0] for o in outs]) if outs else np.zeros(0)
        uids = [u for o in outs for u in o.value[1]]
        n = len(scores)
        k = int(round(frac * n))
        if k == 0:
            threshold, ties = math.inf, []
        else:
            threshold = float(np.partition(scores, n - k)[n - k])
            above = int((scores > threshold).sum())
            tie_uids = sorted(u for u, sc in zip(uids, scores) if sc == threshold)
            ties = tie_uids[: k - above]
        info = {"top_fraction": frac, "scored": n, "kept_top": k, "threshold": threshold}
        outs = engine.map_items(partial(_apply_top, self.rd.url, threshold, ties, frac),
                                shards, max_retries=self.cfg.run.max_retries,
                                desc="score: top fraction")
        dropped: dict[str, int] = {}
        for o in outs:
            for reason, count in (o.value or {}).items():
                dropped[reason] = dropped.get(reason, 0) + count
        return {"global": info, "kept": k, "dropped": dropped}


def _shard_scores(run_url: str, shard: str) -> tuple[np.ndarray, list[str]]:
    """Scores (and uids) of one shard's pairs that passed everything before the filter."""
    from curate.core.rundir import RunDir

    t = RunDir(run_url).read("score", shard, ["uid", "clip_score", "reason"])
    eligible = pc.and_kleene(pc.invert(pc.is_null(t["clip_score"])),
                             pc.or_kleene(pc.is_null(t["reason"]),
                                          pc.starts_with(t["reason"], "below top")))
    t = t.filter(eligible)
    return t["clip_score"].to_numpy(zero_copy_only=False), t["uid"].to_pylist()


def _apply_top(run_url: str, threshold: float, ties: list[str], frac: float,
               shard: str) -> dict[str, int]:
    """Rewrite a shard's kept/reason for the global threshold (idempotent); returns the
    shard's drop counts by reason, which its footer records too."""
    from curate.core.rundir import RunDir
    from curate.stages.base import summarize

    rd = RunDir(run_url)
    path = rd.shard_path("score", shard)
    meta = read_shard_meta(rd.fs, path)
    t = rd.read("score", shard)
    sc = t["clip_score"].to_numpy(zero_copy_only=False)
    reasons = t["reason"].to_pylist()
    uids = t["uid"].to_pylist()
    tie = set(ties)
    label = f"below top score fraction: {frac:g} (threshold {threshold:.4f})"
    for i in range(t.num_rows):
        if reasons[i] is not None and not reasons[i].startswith("below top"):
            continue
        if np.isnan(sc[i]):
            continue
        keep = sc[i] > threshold or (sc[i] == threshold and uids[i] in tie)
        reasons[i] = None if keep else label
    kept = pa.array([r is None for r in reasons])
    t = t.set_column(t.column_names.index("kept"), "kept", kept)
    t = t.set_column(t.column_names.index("reason"), "reason", pa.array(reasons, pa.string()))
    counts = summarize("score", t, (meta or {}).get("counts", {}).get("rows_in", t.num_rows))
    meta = {**(meta or {}), "counts": {**(meta or {}).get("counts", {}), **counts}}
    write_parquet_atomic(rd.fs, path, t, meta=meta)
    return counts["dropped"]


def _load(spec: Any) -> Any:
    """Load the model; random init (``pretrained: none``) is seeded, so every actor, and every
    rerun, gets the same weights: meaningless scores, but consistent ones."""
    import torch

    from curate.models.clip import load_model

    if spec.pretrained == "none":
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            return load_model(spec)
        finally:
            torch.random.set_rng_state(state)
    return load_model(spec)


def _assigned_cpus() -> int:
    """CPUs Ray gave this actor (threads for decode and for torch), 1 outside Ray."""
    try:
        import ray

        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return max(1, os.cpu_count() or 1)


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm == 0, 1, norm)).astype(np.float32)


def _with_nulls(arr: pa.FixedSizeListArray, valid: np.ndarray) -> pa.Array:
    if valid.all():
        return arr
    return pa.FixedSizeListArray.from_arrays(arr.values, arr.type.list_size,
                                             mask=pa.array(~valid))
