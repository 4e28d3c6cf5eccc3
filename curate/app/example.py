"""The offline example behind ``make curate``: a drawn pool, served on loopback, curated.

The pool is made here, deterministically: images drawn with Pillow (shapes and simple
objects in colours, JPEG/PNG/WebP of varied sizes) with captions that name what is drawn,
plus a few broken URLs (404, an HTML page, a truncated JPEG) so the report shows failures.
Concept frequencies follow a Zipf-like law, so balancing has a head to cap and a tail to keep.
A loopback HTTP server on a fixed port (``CURATE_EXAMPLE_PORT``, default 18765, fixed so the
pool's URLs and so its uids are stable across reruns) serves the images while the pipeline
runs, and is stopped afterwards.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from curate.errors import CurateError
from curate.media.loopback import LoopbackServer, Route

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 210),
           "yellow": (240, 210, 40), "orange": (245, 140, 20), "purple": (130, 50, 170),
           "black": (15, 15, 15), "white": (250, 250, 250), "pink": (240, 140, 180),
           "brown": (120, 75, 35)}
# Zipf-like weights: circles are the head, kites and umbrellas the tail
OBJECTS = [("circle", 40), ("square", 22), ("triangle", 14), ("star", 9), ("house", 6),
           ("tree", 5), ("sun", 4), ("car", 3), ("ball", 3), ("flower", 2), ("boat", 2),
           ("kite", 1), ("umbrella", 1)]
BACKGROUNDS = ["white", "black", "blue", "green", "yellow", "pink"]
TEMPLATES = ["a {c} {o} on a {b} background", "{C} {o}, drawn on {b}",
             "photo of a {c} {o}", "A simple drawing of a {c} {o}.",
             "{c} {o} icon; {b} background", "Clip art: the {o} is {c}!"]


def draw(obj: str, colour: tuple, bg: tuple, size: tuple[int, int], rng: random.Random
         ) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    m = min(w, h)
    cx, cy = w // 2 + rng.randint(-m // 8, m // 8), h // 2 + rng.randint(-m // 8, m // 8)
    r = int(m * rng.uniform(0.25, 0.4))
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj in ("circle", "ball", "sun"):
        d.ellipse(box, fill=colour)
        if obj == "sun":
            for k in range(8):
                d.line((cx, cy, cx + int(1.4 * r * (-1) ** k), cy + int(1.4 * r * (k % 3 - 1))),
                       fill=colour, width=max(1, m // 40))
    elif obj == "square":
        d.rectangle(box, fill=colour)
    elif obj in ("triangle", "kite"):
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        if obj == "kite":
            d.line((cx, cy + r, cx - r // 2, h), fill=colour, width=max(1, m // 60))
    elif obj == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r // 2
            a = math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
        d.polygon(pts, fill=colour)
    elif obj == "house":
        d.rectangle((cx - r, cy, cx + r, cy + r), fill=colour)
        d.polygon([(cx - r, cy), (cx, cy - r), (cx + r, cy)], fill=colour)
    elif obj == "tree":
        d.rectangle((cx - r // 6, cy, cx + r // 6, cy + r), fill=(100, 60, 20))
        d.ellipse((cx - r, cy - r, cx + r, cy + r // 3), fill=colour)
    elif obj in ("car", "boat"):
        d.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=colour)
        if obj == "car":
            d.ellipse((cx - r, cy + r // 4, cx - r // 2, cy + r // 2 + r // 4), fill=(0, 0, 0))
            d.ellipse((cx + r // 2, cy + r // 4, cx + r, cy + r // 2 + r // 4), fill=(0, 0, 0))
        else:
            d.polygon([(cx, cy - r), (cx, cy - r // 3), (cx + r // 2, cy - r // 3)], fill=colour)
    elif obj == "flower":
        for dx, dy in ((0, -1), (1, 0), (0, 1), (-1, 0)):
            d.ellipse((cx + dx * r // 2 - r // 3, cy + dy * r // 2 - r // 3,
                       cx + dx * r // 2 + r // 3, cy + dy * r // 2 + r // 3), fill=colour)
        d.ellipse((cx - r // 4, cy - r // 4, cx + r // 4, cy + r // 4), fill=(250, 220, 0))
    elif obj == "umbrella":
        d.pieslice(box, 180, 360, fill=colour)
        d.line((cx, cy, cx, cy + r), fill=(0, 0, 0), width=max(1, m // 50))
    return img


def encode(img: Image.Image, fmt: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=90)
        return buf.getvalue(), "image/jpeg"
    if fmt == "png":
        img.save(buf, "PNG")
        return buf.getvalue(), "image/png"
    img.save(buf, "WEBP", quality=85)
    return buf.getvalue(), "image/webp"


def make_pool(n: int = 240, seed: int = 0) -> tuple[list[dict], dict[str, Route]]:
    """Rows (path, caption) and the routes that serve them; deterministic in ``seed``."""
    rng = random.Random(seed)
    names = [o for o, _ in OBJECTS]
    weights = [w for _, w in OBJECTS]
    rows, routes = [], {}
    for i in range(n):
        obj = rng.choices(names, weights)[0]
        cname = rng.choice([c for c in COLOURS if c != "white"])
        bname = rng.choice([b for b in BACKGROUNDS if b != cname])
        size = (rng.choice([96, 160, 224, 320, 480, 640]), rng.choice([96, 160, 224, 320, 480]))
        fmt = rng.choices(["jpg", "png", "webp"], [6, 2, 2])[0]
        data, ctype = encode(draw(obj, COLOURS[cname], COLOURS[bname], size, rng), fmt)
        path = f"/img/{i:05d}.{fmt}"
        routes[path] = Route(data, ctype)
        caption = rng.choice(TEMPLATES).format(c=cname, C=cname.capitalize(), o=obj, b=bname)
        rows.append({"path": path, "caption": caption})
    # a few broken ones, as any web pool has
    rows.append({"path": "/img/missing.jpg", "caption": "a red circle that is gone (404)"})
    routes["/img/page.jpg"] = Route(b"<!doctype html><html><body>soft 404</body></html>",
                                    "text/html")
    rows.append({"path": "/img/page.jpg", "caption": "a blue square behind a login page"})
    whole, _ = encode(draw("star", COLOURS["yellow"], COLOURS["black"], (320, 240), rng), "jpg")
    routes["/img/truncated.jpg"] = Route(whole[: len(whole) // 2], "image/jpeg")
    rows.append({"path": "/img/truncated.jpg", "caption": "a yellow star, cut off half way"})
    return rows, routes


def example_uid(path: str, caption: str) -> str:
    return hashlib.sha256(f"{path}\n{caption}".encode()).hexdigest()[:32]


def write_if_changed(path: Path, table: pa.Table) -> None:
    """Keep the pool file byte-stable so reruns see the same pool (nothing re-ingested)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


#: the example's pipeline ships with the package, so `curate example` works from anywhere
EXAMPLE_PIPELINE = Path(__file__).resolve().parent / "example.yaml"


def run_example(out: str, pipeline: str | None, overrides: list[str]) -> dict:
    from curate.app.summary import print_summary
    from curate.driver import run_pipeline
    from curate.stages.registry import load_pipeline

    port = int(os.environ.get("CURATE_EXAMPLE_PORT", "18765"))
    rows, routes = make_pool()
    try:
        server = LoopbackServer(routes, port=port)
    except OSError as err:
        raise CurateError(f"example server: cannot listen on 127.0.0.1:{port} ({err.strerror});"
                          " set CURATE_EXAMPLE_PORT to a free port and use a new OUT") from None
    pool_path = Path(out).parent / f"{Path(out).name}-pool" / "pool.parquet"
    # the pool brings its own uids (of path and caption, not of the URL): the same pairs,
    # whatever port the server got, so the example's kept set is one fixed set
    table = pa.table({"uid": [example_uid(r["path"], r["caption"]) for r in rows],
                      "url": [server.url(r["path"]) for r in rows],
                      "caption": [r["caption"] for r in rows]})
    write_if_changed(pool_path, table)
    cfg = load_pipeline(pipeline or EXAMPLE_PIPELINE, overrides)
    with server:
        manifest = run_pipeline(cfg, out, pool=str(pool_path))
    print_summary(out, manifest)
    return manifest
