"""download: fetch each shard's images with img2dataset, inside one Ray task per shard.

img2dataset does the fetching (its ``Downloader``: thread pool, timeouts, retries, the
X-Robots-Tag opt-out handling); curate decides what it may fetch (netguard), guards it
against hostile bytes (imagecheck, run inside img2dataset's resize hook so nothing is decoded
before the checks), and turns its output into ``images/part-NNNNN.parquet``:
uid, image, format, width, height, original_width, original_height, sha256, status
('ok'|'failed'), error, kept, reason (``download_failed``), detail (the error).
Every input row comes out, failures included. Rows whose pool already carries image bytes
are checked and passed through without a fetch.

``width``/``height`` are those of the stored bytes (after ``resize``, when set);
``original_width``/``original_height`` those of the image as fetched, before any resize —
what DataComp's metadata calls ``original_width``/``original_height`` and its basic filter
(side >= 200, aspect ratio <= 3) reads. They come from img2dataset's resizer, which decodes
with OpenCV without applying EXIF orientation, like PIL's header size used without resize.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq
from pydantic import Field

from curate.config import OPERATIONAL, Section
from curate.core.engine import Resources
from curate.media import imagecheck, netguard
from curate.stages.base import DECISION_FIELDS, Stage

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("uid", pa.string()), ("image", pa.binary()), ("format", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()),
    ("original_height", pa.int32()), ("sha256", pa.string()),
    ("status", pa.string()), ("error", pa.string()), *DECISION_FIELDS,
])


class ResizeConfig(Section):
    image_size: int = Field(256, ge=8)
    resize_mode: Literal["keep_ratio", "center_crop", "border", "keep_ratio_largest"] = (
        "keep_ratio"
    )
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)


class DownloadConfig(Section):
    """img2dataset settings; the limits guard workers against hostile servers."""

    threads: int = Field(32, ge=1, le=1024, description="fetch threads per shard task",
                         json_schema_extra=OPERATIONAL)
    processes: int | None = Field(
        None, ge=1, description="shard tasks at once (default: one per CPU of the Ray cluster)",
        json_schema_extra=OPERATIONAL)
    timeout: float = Field(10, gt=0, le=600)
    retries: int = Field(0, ge=0, le=10)
    max_image_bytes: int = Field(20_000_000, ge=1)
    max_image_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb limit")
    allow_private_addresses: bool = False
    user_agent_token: str | None = None
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    resize: ResizeConfig | None = None




class GuardedResizer:
    """img2dataset's resize hook, with our header checks first (no decode before them)."""

    def __init__(self, inner: Any | None, max_bytes: int, max_pixels: int):
        self.inner = inner
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None):
        data = img_stream.getvalue()
        _, w, h, err = imagecheck.inspect(data, self.max_bytes, self.max_pixels)
        if err:
            return None, None, None, None, None, err
        if self.inner is None:
            return data, w, h, w, h, None
        img_stream.seek(0)
        return self.inner(img_stream, blurring_bbox_list)


def _make_resizer(cfg: Any) -> GuardedResizer:
    from img2dataset.resizer import Resizer

    r = cfg.resize
    inner = None
    if r is not None:
        inner = Resizer(image_size=r.image_size, resize_mode=r.resize_mode,
                        resize_only_if_bigger=r.resize_only_if_bigger,
                        encode_format=r.encode_format, encode_quality=r.encode_quality,
                        max_image_area=cfg.max_image_pixels)
    return GuardedResizer(inner, cfg.max_image_bytes, cfg.max_image_pixels)


def fetch(uids: list[str], urls: list[str], cfg: Any, scratch: str) -> dict[str, dict]:
    """Run img2dataset's Downloader on one list of URLs; uid -> {image, status, error}."""
    from img2dataset.downloader import Downloader
    from img2dataset.writer import ParquetSampleWriter

    if not urls:
        return {}
    src = f"{scratch}/input.feather"
    feather.write_feather(pa.table({"url": urls, "uid": uids}), src)
    out_dir = f"{scratch}/out"
    directives = cfg.disallowed_header_directives or None
    downloader = Downloader(
        sample_writer_class=ParquetSampleWriter, resizer=_make_resizer(cfg),
        thread_count=cfg.threads, save_caption=False, extract_exif=False,
        output_folder=out_dir, column_list=["url", "uid"], timeout=cfg.timeout,
        number_sample_per_shard=max(10, len(urls)), oom_shard_count=5, compute_hash=None,
        verify_hash_type=None, encode_format=cfg.resize.encode_format if cfg.resize else "jpg",
        retries=cfg.retries, user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=directives,
    )
    os.makedirs(out_dir, exist_ok=True)  # img2dataset makes it only in its own download()
    ok, _ = downloader((0, src))
    if not ok:
        raise RuntimeError("img2dataset failed on this shard (see worker log)")
    fmt = cfg.resize.encode_format if cfg.resize else "jpg"
    table = pq.read_table(f"{out_dir}/00000.parquet", columns=[
        "uid", "status", "error_message", fmt, "original_width", "original_height"])
    result: dict[str, dict] = {}
    for uid, status, err, img, ow, oh in zip(
            table["uid"].to_pylist(), table["status"].to_pylist(),
            table["error_message"].to_pylist(), table[fmt].to_pylist(),
            table["original_width"].to_pylist(), table["original_height"].to_pylist()):
        if status == "success" and img is not None:
            result[uid] = {"image": img, "error": None, "original": (ow, oh)}
        else:
            result[uid] = {"image": None, "error": (err or status or "unknown error").strip()}
    return result


class DownloadStage(Stage):
    kind = "download"
    folder = "images"
    view = "images"
    decides = True
    Config = DownloadConfig
    schema = SCHEMA
    reasons = {"download_failed": "the image could not be fetched or failed its checks "
                                  "(detail: the error)"}
    joins = ("image", "format", "width", "height", "sha256")
    pool_columns = None
    help = "Fetch each shard's images with img2dataset (URL guard, header checks)."

    def resources(self) -> Resources:
        return Resources(num_cpus=1)

    def max_in_flight(self) -> int | None:
        return self.section.processes

    def inputs(self, shard: str) -> pa.Table:
        t = self.survivors(shard)
        cols = [c for c in ("uid", "url", "image") if c in t.column_names]
        return t.select(cols)

    def needs_rerun(self, meta: dict[str, Any]) -> bool:
        """``--retry-failed``: a finished shard with failures is processed again."""
        return bool(self.spec.options.get("retry_failed")) and bool(
            meta.get("counts", {}).get("dropped"))

    def input_digest(self, shard: str, inputs: pa.Table) -> str:
        from curate.core.rundir import uid_digest

        return uid_digest(inputs["uid"])  # never the state: a rerun reuses every success

    def _previous_successes(self, shard: str) -> dict[str, tuple[bytes, tuple | None]]:
        """uid -> (stored bytes, original size or None) of an earlier attempt's successes."""
        import pyarrow.parquet as pq

        from curate.core.io import read_shard_meta

        path = self.rd.shard_path(self.pipeline.ref(self.name).folder, shard)
        meta = read_shard_meta(self.rd.fs, path)
        if not meta or meta.get("fingerprint") != self.spec.fingerprint:
            return {}
        with self.rd.fs.open(path, "rb") as f:
            has_original = "original_width" in pq.read_schema(f).names
        cols = ["uid", "image", "kept"] + (["original_width", "original_height"]
                                           if has_original else [])
        t = self.rd.read(self.pipeline.ref(self.name).folder, shard, cols)
        t = t.filter(t["kept"])
        sizes = (zip(t["original_width"].to_pylist(), t["original_height"].to_pylist())
                 if has_original else [None] * t.num_rows)
        return {u: (img, size) for u, img, size in zip(t["uid"].to_pylist(),
                                                         t["image"].to_pylist(), sizes)}

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        cfg = self.section
        # urllib's opener is per process, and a worker may serve runs with either setting
        netguard.install_redirect_guard(enabled=not cfg.allow_private_addresses)
        uids = inputs["uid"].to_pylist()
        n = len(uids)
        images: list[bytes | None] = [None] * n
        errors: list[str | None] = [None] * n
        # the size as fetched, before any resize (None: the stored bytes' own size)
        originals: list[tuple | None] = [None] * n
        brought = inputs["image"].to_pylist() if "image" in inputs.column_names else [None] * n
        urls = inputs["url"].to_pylist() if "url" in inputs.column_names else [None] * n

        # reuse what an earlier attempt at this shard already fetched: a rerun (retry of
        # failures, a pool whose balancing changed) never downloads a success twice
        previous = self._previous_successes(shard)
        for i in range(n):
            if brought[i] is None and uids[i] in previous:
                brought[i], originals[i] = previous[uids[i]]
                if originals[i] is None and cfg.resize is not None:
                    originals[i] = (None, None)  # an older shard: the size before resize is lost
        need = [i for i in range(n) if brought[i] is None]
        for i in range(n):
            if brought[i] is not None:
                images[i] = brought[i]
        if need:
            refused = netguard.refusals([urls[i] or "" for i in need],
                                        cfg.allow_private_addresses, cfg.threads)
            fetch_idx = []
            for i, reason in zip(need, refused):
                if urls[i] is None:
                    errors[i] = "no url and no image bytes"
                elif reason:
                    errors[i] = reason
                else:
                    fetch_idx.append(i)
            scratch = tempfile.mkdtemp(prefix=f"curate-dl-{shard[:10]}-")
            try:
                got = fetch([uids[i] for i in fetch_idx], [urls[i] for i in fetch_idx], cfg,
                            scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            for i in fetch_idx:
                r = got.get(uids[i])
                if r is None:
                    errors[i] = "missing from img2dataset output"
                else:
                    images[i], errors[i] = r["image"], r["error"]
                    originals[i] = r.get("original")
        return build_table(uids, images, errors, cfg, originals)


def build_table(uids: list[str], images: list[bytes | None], errors: list[str | None],
                cfg: Any, originals: list[tuple | None] | None = None) -> pa.Table:
    """Check every image's header and assemble the output shard.

    ``originals[i]``: (width, height) of the image as fetched, before img2dataset resized
    it; None where no resize happened (pool bytes, or no ``resize``): the stored size."""
    fmts, ws, hs, shas, ows, ohs = [], [], [], [], [], []
    originals = originals if originals is not None else [None] * len(images)
    for i, data in enumerate(images):
        fmt = w = h = sha = None
        if data is not None and errors[i] is None:
            fmt, w, h, err = imagecheck.inspect(data, cfg.max_image_bytes, cfg.max_image_pixels)
            if err:
                errors[i], images[i] = err, None
            else:
                sha = hashlib.sha256(data).hexdigest()
        elif errors[i] is None:
            errors[i] = "no image"
        if errors[i] is not None:
            images[i] = None
            fmt = w = h = None
        fmts.append(fmt)
        ws.append(w)
        hs.append(h)
        shas.append(sha)
        ow, oh = originals[i] if originals[i] is not None and fmt is not None else (w, h)
        ows.append(ow)
        ohs.append(oh)
    ok = pa.array([e is None for e in errors])
    error_arr = pa.array(errors, pa.string())
    return pa.Table.from_arrays([
        pa.array(uids, pa.string()), pa.array(images, pa.binary()), pa.array(fmts, pa.string()),
        pa.array(ws, pa.int32()), pa.array(hs, pa.int32()), pa.array(ows, pa.int32()),
        pa.array(ohs, pa.int32()), pa.array(shas, pa.string()),
        pc.if_else(ok, "ok", "failed"), error_arr, ok,
        pc.if_else(ok, pa.scalar(None, pa.string()), "download_failed"), error_arr,
    ], schema=SCHEMA)
