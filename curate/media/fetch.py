"""img2dataset's Downloader on one list of URLs (moved out of ``stages/download.py``).

img2dataset does the fetching (thread pool, timeouts, retries, X-Robots-Tag); curate's
header checks run inside its resize hook (``GuardedResizer``) so nothing is decoded before
them, and :mod:`curate.media.polite` adds the per-host cap, 429/503 back-off and TDMRep's
response header.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from curate.media import imagecheck, polite


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


def make_resizer(cfg: Any) -> GuardedResizer:
    from img2dataset.resizer import Resizer

    r = cfg.resize
    inner = None
    if r is not None:
        inner = Resizer(image_size=r.image_size, resize_mode=r.resize_mode,
                        resize_only_if_bigger=r.resize_only_if_bigger,
                        encode_format=r.encode_format, encode_quality=r.encode_quality,
                        max_image_area=cfg.max_image_pixels)
    return GuardedResizer(inner, cfg.max_image_bytes, cfg.max_image_pixels)


def fetch(uids: list[str], urls: list[str], cfg: Any, scratch: str,
          policy: polite.Policy | None = None) -> dict[str, dict]:
    """Run img2dataset's Downloader on one list of URLs; uid -> {image, error, original}.
    With ``policy``, URLs are interleaved by host and fetched politely."""
    from img2dataset.downloader import Downloader
    from img2dataset.writer import ParquetSampleWriter

    if not urls:
        return {}
    if policy is not None:
        hosts = [polite.host_of(u) for u in urls]
        order = polite.interleave(list(range(len(urls))), hosts)
        uids, urls = [uids[i] for i in order], [urls[i] for i in order]
        policy.expect(urls, [hosts[i] for i in order], cfg.threads)
    src = f"{scratch}/input.feather"
    feather.write_feather(pa.table({"url": urls, "uid": uids}), src)
    out_dir = f"{scratch}/out"
    directives = cfg.disallowed_header_directives or None
    downloader = Downloader(
        sample_writer_class=ParquetSampleWriter, resizer=make_resizer(cfg),
        thread_count=cfg.threads, save_caption=False, extract_exif=False,
        output_folder=out_dir, column_list=["url", "uid"], timeout=cfg.timeout,
        number_sample_per_shard=max(10, len(urls)), oom_shard_count=5, compute_hash=None,
        verify_hash_type=None, encode_format=cfg.resize.encode_format if cfg.resize else "jpg",
        retries=cfg.retries, user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=directives,
    )
    os.makedirs(out_dir, exist_ok=True)  # img2dataset makes it only in its own download()
    if policy is not None:
        with polite.active(policy):
            ok, _ = downloader((0, src))
    else:
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
