"""download records the size of each image as fetched, before any resize
(``original_width``/``original_height``, int32: what DataComp's basic filter reads)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import base_config, drawn_image, write_pool
from PIL import Image

from curate.driver import run_pipeline


def _served_sizes(server, paths) -> dict[str, tuple[int, int]]:
    """url -> (width, height) of the bytes the server sends, read with Pillow here."""
    return {server.url(p): Image.open(io.BytesIO(server.routes[p].body)).size for p in paths}


def _rows(out) -> list[dict]:
    images = pq.read_table(f"{out}/images")
    pool = pq.read_table(f"{out}/pool", columns=["uid", "url"])
    url = dict(zip(pool["uid"].to_pylist(), pool["url"].to_pylist()))
    return [{**r, "url": url[r["uid"]]} for r in images.to_pylist()]


def test_original_size_before_resize(tmp_path, image_server, ray_session):
    paths = [p for p in sorted(image_server.routes) if p.startswith("/ok/")][:12]
    served = _served_sizes(image_server, paths)
    # keep_ratio, only if bigger: a shorter side above 64 is scaled down to 64
    assert any(min(s) > 64 for s in served.values())
    pool = write_pool(tmp_path / "pool.parquet",
                      [{"url": u, "caption": f"picture {i}"} for i, u in enumerate(served)]
                      + [{"url": image_server.url("/bad/missing.jpg"), "caption": "gone"}])
    cfg = base_config(download={"resize": {"image_size": 64, "resize_mode": "keep_ratio",
                                           "encode_format": "webp"}})
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=pool)
    schema = pq.read_schema(next((out / "images").glob("part-*.parquet")))
    assert schema.field("original_width").type == pa.int32()
    assert schema.field("original_height").type == pa.int32()
    resized = 0
    for r in _rows(out):
        if r["url"] not in served:
            assert r["status"] == "failed"
            assert r["original_width"] is None and r["original_height"] is None
            continue
        assert r["status"] == "ok", r["error"]
        assert (r["original_width"], r["original_height"]) == served[r["url"]]
        stored = Image.open(io.BytesIO(r["image"])).size
        assert (r["width"], r["height"]) == stored
        if stored != served[r["url"]]:
            resized += 1
            assert min(stored) == 64 < min(served[r["url"]])
    assert resized > 0


def test_original_size_without_resize_and_for_pool_bytes(tmp_path, image_server, ray_session):
    paths = [p for p in sorted(image_server.routes) if p.startswith("/ok/")][:4]
    served = _served_sizes(image_server, paths)
    pool = write_pool(tmp_path / "pool.parquet",
                      [{"url": u, "caption": f"picture {i}"} for i, u in enumerate(served)])
    out = tmp_path / "run"
    run_pipeline(base_config(), str(out), pool=pool)
    for r in _rows(out):
        assert (r["original_width"], r["original_height"]) == served[r["url"]]
        assert (r["width"], r["height"]) == served[r["url"]]

    # bytes the pool brings are not resized: their own size is the original one
    img = drawn_image(3, (300, 120), "jpg")
    p2 = tmp_path / "pool2.parquet"
    pq.write_table(pa.table({"url": ["http://example.invalid/a.jpg"], "caption": ["a thing"],
                             "image": [img]}), p2)
    out2 = tmp_path / "run2"
    cfg = base_config(download={"resize": {"image_size": 64}})
    run_pipeline(cfg, str(out2), pool=str(p2))
    (r,) = pq.read_table(f"{out2}/images").to_pylist()
    assert (r["original_width"], r["original_height"]) == (300, 120) == (r["width"], r["height"])
