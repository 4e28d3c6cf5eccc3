"""image_dedup on images drawn here: copies across URLs, re-encoded, resized and lightly
cropped copies, placeholders served by many hosts, and distinct photos that must all stay.

The reference is the rule written out here over every pair of images: hashes computed with
hashlib, PIL and imagehash directly; the order key of a pool-derived uid is its first 16 hex
digits (docs/ARCHITECTURE.md, uids); precedence placeholder > bytes > pixels > near.
"""

from __future__ import annotations

import hashlib
import io

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import encode_image, photo, read_parts
from PIL import Image

from curate.core.rundir import step_info
from curate.driver import run_pipeline

RADIUS = 4
HOSTS = 4  # placeholder_hosts: the copies of "a" below come from 3 hosts, the placeholder 4


def _pool_rows() -> list[dict]:
    rows = []
    for i in range(30):  # distinct photos: nothing may merge
        rows.append({"url": f"http://site{i}.example.com/p{i}.png", "caption": f"photo {i}",
                     "image": encode_image(photo(i))})
    a, b, c = photo(100), photo(101), photo(102)
    rows += [
        # the same file under other URLs (other hosts), other captions
        {"url": "http://a.example.org/x.png", "caption": "a red thing", "image": encode_image(a)},
        {"url": "http://b.example.org/y.png", "caption": "a red object", "image": encode_image(a)},
        # the same pixels, different bytes (PNG metadata)
        {"url": "http://c.example.org/z.png", "caption": "red", "image": encode_image(
            a, pnginfo=_meta())},
        # re-encoded as JPEG, resized, lightly cropped
        {"url": "http://d.example.org/b.png", "caption": "blue scene", "image": encode_image(b)},
        {"url": "http://e.example.org/b.jpg", "caption": "blue scene jpg",
         "image": encode_image(b, "JPEG", quality=70)},
        {"url": "http://f.example.org/b2.png", "caption": "blue small",
         "image": encode_image(b.resize((80, 60)))},
        {"url": "http://g.example.org/b3.png", "caption": "blue crop",
         "image": encode_image(b.crop((2, 2, 158, 118)))},
        {"url": "http://h.example.org/c.png", "caption": "green", "image": encode_image(c)},
    ]
    # a placeholder served by four hosts for unrelated captions
    ph = encode_image(Image.new("RGB", (120, 90), (200, 200, 200)))
    rows += [{"url": f"http://host{k}.example.net/missing{k}.jpg", "caption": cap, "image": ph}
             for k, cap in enumerate(["a cat", "mountain lake", "red car", "wedding cake"])]
    return rows


def _meta():
    from PIL.PngImagePlugin import PngInfo

    m = PngInfo()
    m.add_text("Comment", "same pixels, other bytes")
    return m


def _reference(rows: list[dict], uids: list[str]) -> dict[str, str | None]:
    """uid -> reason code (None: kept), by the rule over every pair."""
    n = len(rows)
    order = [int(u[:16], 16) for u in uids]
    b = [hashlib.sha256(r["image"]).digest()[:8] for r in rows]
    imgs = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in rows]
    x = [hashlib.sha256(np.array(im.size, "<u4").tobytes() + im.tobytes()).digest()[:8]
         for im in imgs]
    ph = [imagehash.phash(im) for im in imgs]
    host = [r["url"].split("/")[2] for r in rows]
    cap = [r["caption"] for r in rows]

    def placeholder(i):
        for same in (lambda j: b[j] == b[i], lambda j: x[j] == x[i],
                     lambda j: ph[j] - ph[i] == 0):
            group = [j for j in range(n) if same(j)]
            if len({host[j] for j in group}) >= HOSTS and len({cap[j] for j in group}) >= HOSTS:
                return True
        return False

    out = {}
    for i in range(n):
        earlier = [j for j in range(n) if order[j] < order[i]]
        if placeholder(i):
            out[uids[i]] = "placeholder_image"
        elif any(b[j] == b[i] for j in earlier):
            out[uids[i]] = "duplicate_image_bytes"
        elif any(x[j] == x[i] for j in earlier):
            out[uids[i]] = "duplicate_image_pixels"
        elif any(ph[j] - ph[i] <= RADIUS for j in earlier):
            out[uids[i]] = "near_duplicate_image"
        else:
            out[uids[i]] = None
    return out


@pytest.mark.parametrize("partitions", [None, 1, 7])
def test_matches_the_rule_and_catches_copies(tmp_path, ray_session, partitions):
    rows = _pool_rows()
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in ("url", "caption")}
                            | {"image": pa.array([r["image"] for r in rows], pa.binary())}),
                   pool)
    cfg = base_config(stages=["image_dedup", "report"], pool={"shard_size": 9},
                      image_dedup={"radius": RADIUS, "partitions": partitions,
                                   "placeholder_hosts": HOSTS})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=str(pool))
    got_t = read_parts(tmp_path / "run" / "image_dedup")
    poolt = read_parts(tmp_path / "run" / "pool")
    by_caption = dict(zip(poolt["caption"].to_pylist(), poolt["uid"].to_pylist()))
    uids = [by_caption[r["caption"]] for r in rows]
    want = _reference(rows, uids)
    got = dict(zip(got_t["uid"].to_pylist(), got_t["reason"].to_pylist()))
    assert got == want
    # what the rule says in words: distinct photos all stay, every copy group keeps one
    assert all(got[by_caption[f"photo {i}"]] is None for i in range(30))
    for group in (["a red thing", "a red object", "red"],
                  ["blue scene", "blue scene jpg", "blue small", "blue crop"]):
        assert sum(got[by_caption[c]] is None for c in group) == 1, group
    assert got[by_caption["green"]] is None
    assert {got[by_caption[c]] for c in ["a cat", "mountain lake", "red car",
                                         "wedding cake"]} == {"placeholder_image"}
    # detail names an earlier pair of the same image
    dropped = got_t.filter(pa.compute.equal(got_t["reason"], "duplicate_image_bytes"))
    assert dropped.num_rows and all(d in uids for d in dropped["detail"].to_pylist())
    st = m["stages"]["image_dedup"]
    assert st["dropped"]["placeholder_image"] == 4
    assert not list((tmp_path / "run" / "image_dedup" / "_work").rglob("hash-*"))
    # the report shows the placeholder as the largest group, with a thumbnail
    assert step_info(st, "dedup")["groups"][0][:2] == [4, 4]
    page = (tmp_path / "run" / "reports" / "report.html").read_text(encoding="utf-8")
    sheets = page.split('<section id="contact-sheets">', 1)[1].split("</section>", 1)[0]
    ph = sheets.split("placeholder_image: the largest groups", 1)[1].split("<h3>", 1)[0]
    assert "4 pairs from 4 hosts" in ph and ph.count("data:image/jpeg;base64,") == 1


def test_near_over_bands_equals_brute_force():
    """Multi-index hashing finds every pair within the radius: flags over all bands equal
    'some pair with a smaller order key is within radius bits', computed pair by pair."""
    from curate.algorithms import image_dedup as alg

    rng = np.random.default_rng(3)
    n, r = 400, 5
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    for i in range(0, 120, 3):  # plant neighbours 1..r bits away, and exact copies
        flips = rng.choice(64, rng.integers(0, r + 1), replace=False)
        h[i + 1] = h[i] ^ np.uint64(sum(1 << int(f) for f in flips))
    h[200:210] = h[199]
    order = rng.permutation(n).astype(np.uint64)
    dup = np.zeros(n, bool)
    for band in alg.band_values(h, r):
        d, best = alg.near(order, h, band, r)
        assert np.all(order[best] <= order)
        dup |= d
    hs = [int(v) for v in h]
    want = [any(bin(hs[i] ^ hs[j]).count("1") <= r and order[j] < order[i] for j in range(n))
            for i in range(n)]
    assert dup.tolist() == want and 40 < sum(want) < n
