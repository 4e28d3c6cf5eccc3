"""Hash lists as Re-LAION-5B used them: md5, sha1 and PDQ lists in ``download.denylist``.

A listed image is dropped as ``denylisted`` and purged: after a whole run its bytes are in
no file of the run directory (scanned file by file: Parquet binary columns, raw bytes,
base64 ``data:image`` URIs of the report), reruns never fetch it again, a list changed
under the same path purges images stored before, and a pool that brought the bytes has
its pool shard purged. Images are drawn with Pillow (gradients, shapes, text: PDQ needs
structure) and served from 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config, write_pool
from helpers import encode_image, read_parts
from PIL import Image, ImageDraw

from curate.driver import run_pipeline
from curate.media.loopback import LoopbackServer, Route


def draw(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 / w, y * 255 / h, (x + y) * 128 / (w + h) + rng.integers(0, 127)],
                 -1).astype(np.uint8)
    img = Image.fromarray(a)
    d = ImageDraw.Draw(img)
    for k in range(6):
        x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        box = (x0, y0, x0 + int(rng.integers(20, 80)), y0 + int(rng.integers(20, 80)))
        (d.ellipse if k % 2 else d.rectangle)(box, fill=tuple(int(c) for c in
                                                             rng.integers(0, 256, 3)))
    d.text((10, 10), f"image {seed}", fill=(0, 0, 0))
    return img


def ref_pdq_hex(img: Image.Image) -> str:
    """The reference: pdqhash's bits packed MSB first by hand (ThreatExchange's hex)."""
    import pdqhash

    bits, _ = pdqhash.compute(np.asarray(img.convert("RGB")))
    return f"{int(''.join(str(int(b)) for b in bits), 2):064x}"


# ---------------------------------------------------------------- PDQ

def test_pdq_hex_is_threatexchange_form_and_matches_copies():
    from curate.algorithms.denylist import match
    from curate.media import pdq

    photo = draw(3)
    packed, quality = pdq.pdq(encode_image(photo))
    assert quality > 0 and pdq.to_hex(packed[None])[0] == ref_pdq_hex(photo)
    assert (pdq.from_hex([ref_pdq_hex(photo)])[0] == packed).all()
    copies = [encode_image(photo, "JPEG", quality=70), encode_image(photo.resize((240, 180))),
              encode_image(photo.resize((240, 180)), "JPEG", quality=70)]
    others = [encode_image(draw(s)) for s in (4, 5, 6, 7)]
    hashes = pdq.pdq_hashes(copies + others + [None, b"not an image"])
    rules = pa.table({"kind": ["pdq"], "value": [ref_pdq_hex(photo).upper()]})
    labels = match(rules, pa.array([str(i) for i in range(9)]), pdq=hashes).to_pylist()
    want = f"pdq:{ref_pdq_hex(photo).upper()}"
    assert labels == [want] * 3 + [None] * 6
    assert list(hashes[1]) == [True] * 7 + [False, False]


def test_pdq_nearest_is_chunked_and_exact():
    from curate.algorithms.pdq_match import nearest

    rng = np.random.default_rng(0)
    listed = rng.integers(0, 2**63, (500, 4), dtype=np.uint64)
    q = listed[[7, 300]].copy()
    q[0, 0] ^= np.uint64(0b111)  # 3 bits off entry 7
    q = np.vstack([q, rng.integers(0, 2**63, (3, 4), dtype=np.uint64)])
    for block in (1, 37, 1 << 20):  # any block size gives the same answer
        which, dist = nearest(q, listed, 31, block=block)
        assert which.tolist()[:2] == [7, 300] and dist.tolist()[:2] == [3, 0]
        assert which.tolist()[2:] == [-1, -1, -1]


def test_md5_sha1_labels_and_malformed_lines(tmp_path):
    from curate.algorithms.denylist import match
    from curate.core.rundir import RunDir
    from curate.errors import ConfigError
    from curate.stages._download_denylist import DenylistConfig, write_denylist

    a, b = encode_image(draw(1)), encode_image(draw(2))
    rules = pa.table({"kind": ["md5", "sha1"],
                      "value": [hashlib.md5(a).hexdigest().upper(), hashlib.sha1(b).hexdigest()]})
    got = match(rules, pa.array(["1", "2"]),
                md5=pa.array([hashlib.md5(d).hexdigest() for d in (a, b)]),
                sha1=pa.array([hashlib.sha1(d).hexdigest() for d in (a, b)])).to_pylist()
    assert got == [f"md5:{hashlib.md5(a).hexdigest()}", f"sha1:{hashlib.sha1(b).hexdigest()}"]
    rd = RunDir(str(tmp_path / "run"))
    for key, bad in (("md5", "abc"), ("sha1", "z" * 40), ("pdq", "0" * 63)):
        f = tmp_path / f"{key}.txt"
        f.write_text(f"# list\n{'0' * {'md5': 32, 'sha1': 40, 'pdq': 64}[key]}\n{bad}\n")
        with pytest.raises(ConfigError) as err:
            write_denylist(rd, DenylistConfig(**{key: str(f)}))
        msg = str(err.value)
        assert "\n" not in msg and str(f) in msg and "line 3" in msg and repr(bad) in msg


def test_malformed_hash_list_exits_2_with_one_line(tmp_path, ray_session):
    from typer.testing import CliRunner

    from curate.cli import app

    bad = tmp_path / "md5.txt"
    bad.write_text("d41d8cd98f00b204e9800998ecf8427e\nnot-hex\n")
    pool = write_pool(tmp_path / "pool.parquet", [{"url": "http://127.0.0.1:9/a.jpg",
                                                   "caption": "a"}])
    yaml = tmp_path / "p.yaml"
    yaml.write_text("stages: [download]\ndownload: {allow_private_addresses: true, "
                    f"denylist: {{md5: {bad}}}}}\n")
    r = CliRunner().invoke(app, ["run", "--pool", pool, "--pipeline", str(yaml), "--out",
                                 str(tmp_path / "run")])
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "line 2" in lines[0] and "'not-hex'" in lines[0] and str(bad) in lines[0]


# ---------------------------------------------------------------- the purge, end to end

LISTED = {"/l/md5.png": 1, "/l/sha1.jpg": 2, "/l/pdq.jpg": 3}
LATE = "/l/late.png"  # listed only once the md5 file changes


def _routes() -> dict[str, Route]:
    routes = {f"/a/{i}.png": Route(encode_image(draw(10 + i)), "image/png") for i in range(6)}
    routes["/l/md5.png"] = Route(encode_image(draw(1)), "image/png")
    routes["/l/sha1.jpg"] = Route(encode_image(draw(2), "JPEG", quality=90), "image/jpeg")
    # PDQ: the list has the original's hash; the server has a resized JPEG q70 copy
    routes["/l/pdq.jpg"] = Route(encode_image(draw(3).resize((240, 180)), "JPEG", quality=70),
                                 "image/jpeg")
    routes[LATE] = Route(encode_image(draw(4)), "image/png")
    return routes


def _images_in(data: bytes) -> list[bytes]:
    """Encoded images inside a non-Parquet file: base64 data URIs (the report's)."""
    found = re.findall(rb"data:image/[a-z+]+;base64,([A-Za-z0-9+/=]+)", data)
    return [base64.b64decode(b) for b in found]


def scan(run: Path, listed_bytes: list[bytes], listed_imgs: list[Image.Image]) -> int:
    """Every file under ``run``: no listed image's bytes, pixels, or PDQ near-copy.
    Returns how many images were decoded and checked."""
    from curate.algorithms.pdq_match import nearest
    from curate.media import pdq

    listed_px = [np.asarray(i.convert("RGB")) for i in listed_imgs]
    listed_h = pdq.from_hex([ref_pdq_hex(i) for i in listed_imgs])
    checked = 0

    def check(blob: bytes, where: str) -> None:
        nonlocal checked
        assert all(blob != b for b in listed_bytes), f"listed bytes in {where}"
        rgb = pdq.decode_rgb(blob)
        if rgb is None:
            return
        checked += 1
        assert not any(rgb.shape == px.shape and (rgb == px).all() for px in listed_px), where
        h, _ = pdq.pdq(blob)
        which, _ = nearest(h[None], listed_h, 31)
        assert which[0] == -1, f"a PDQ copy of a listed image in {where}"

    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        assert not any(b in raw for b in listed_bytes), f"listed bytes in {path}"
        if path.suffix == ".parquet":
            t = pq.read_table(path)
            for name, col in zip(t.column_names, t.columns):
                if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                    for v in col.to_pylist():
                        if v:
                            check(v, f"{path}:{name}")
        else:
            for blob in _images_in(raw):
                check(blob, f"{path} (data URI)")
    return checked


@pytest.fixture(scope="module")
def server():
    with LoopbackServer(_routes()) as srv:
        yield srv


def _lists(tmp_path: Path, srv: LoopbackServer, late: bool = False) -> dict[str, str]:
    md5 = tmp_path / "md5.txt"
    vals = [hashlib.md5(srv.routes["/l/md5.png"].body).hexdigest().upper()]
    if late:
        vals.append(hashlib.md5(srv.routes[LATE].body).hexdigest())
    md5.write_text("# a child-safety list (test)\n" + "\n".join(vals) + "\n")
    sha1 = tmp_path / "sha1.txt"
    sha1.write_text(hashlib.sha1(srv.routes["/l/sha1.jpg"].body).hexdigest() + "\n")
    pdq = tmp_path / "pdq.txt"
    pdq.write_text(ref_pdq_hex(draw(3)) + "  # the original, not the served copy\n")
    return {"md5": str(md5), "sha1": str(sha1), "pdq": str(pdq)}


def _listed(srv, late=False):
    paths = [*LISTED, LATE] if late else list(LISTED)
    seeds = [*LISTED.values(), 4] if late else list(LISTED.values())
    return [srv.routes[p].body for p in paths], [draw(s) for s in seeds]


def test_hash_lists_drop_purge_and_reruns(tmp_path, server, ray_session):
    srv = server
    paths = sorted(srv.routes)
    pool = write_pool(tmp_path / "pool.parquet", [
        {"url": srv.url(p), "caption": f"a drawn picture {i}"} for i, p in enumerate(paths)])
    cfg = base_config(stages=["download", "emit", "report"], pool={"shard_size": 4},
                      download={"denylist": _lists(tmp_path, srv),
                                "consent": {"robots": False, "tdmrep": False}})
    out = tmp_path / "run"
    before = dict(srv.hits)
    m = run_pipeline(cfg, str(out), pool=pool)
    st = m["stages"]["download"]
    assert st["dropped"] == {"denylisted": 3}
    assert st["by_detail"] == {"denylisted": {"md5": 1, "sha1": 1, "pdq": 1}}
    imgs = pq.read_table(out / "images").to_pylist()
    url_of = {r["uid"]: r["url"] for r in pq.read_table(out / "pool").to_pylist()}
    got = {url_of[r["uid"]]: r for r in imgs}
    md5 = hashlib.md5(srv.routes["/l/md5.png"].body).hexdigest()
    assert got[srv.url("/l/md5.png")]["detail"] == f"md5:{md5}"
    assert got[srv.url("/l/pdq.jpg")]["detail"] == f"pdq:{ref_pdq_hex(draw(3))}"
    for p in LISTED:
        r = got[srv.url(p)]
        assert r["reason"] == "denylisted" and r["image"] is None and r["sha256"] is None
    assert (out / "reports" / "report.html").exists()
    assert scan(out, *_listed(srv)) >= 7  # the six others and LATE, at least once each

    def served(path):
        return srv.hits.get(path, 0) - before.get(path, 0)
    assert all(served(p) == 1 for p in LISTED)

    # reruns: plain, then --retry-failed (which re-processes the shards with drops)
    run_pipeline(cfg, str(out), pool=pool)
    m = run_pipeline(cfg, str(out), pool=pool, options={"download": {"retry_failed": True}})
    assert all(served(p) == 1 for p in LISTED)  # never fetched again
    assert m["stages"]["download"]["by_detail"] == {"denylisted": {"md5": 1, "sha1": 1,
                                                                    "pdq": 1}}
    scan(out, *_listed(srv))

    # the md5 file changes under the same path: the image stored by the first run goes
    late_before = served(LATE)
    _lists(tmp_path, srv, late=True)
    m = run_pipeline(cfg, str(out), pool=pool)
    assert served(LATE) == late_before  # re-checked from the stored bytes, not fetched
    assert m["stages"]["download"]["by_detail"]["denylisted"] == {"md5": 2, "sha1": 1,
                                                                   "pdq": 1}
    late = next(r for r in pq.read_table(out / "images").to_pylist()
                if url_of[r["uid"]] == srv.url(LATE))
    assert late["reason"] == "denylisted" and late["image"] is None
    assert srv.url(LATE) not in read_parts(out / "curated")["url"].to_pylist()
    scan(out, *_listed(srv, late=True))
    run_pipeline(cfg, str(out), pool=pool, options={"download": {"retry_failed": True}})
    assert served(LATE) == late_before and all(served(p) == 1 for p in LISTED)
    scan(out, *_listed(srv, late=True))


def test_pool_bytes_are_purged_from_the_pool_shard(tmp_path, ray_session):
    from curate.core.io import read_shard_meta

    listed, kept = encode_image(draw(1)), [encode_image(draw(20 + i)) for i in range(3)]
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": [f"c{i}" for i in range(4)],
                             "image": [kept[0], listed, kept[1], kept[2]]}), pool)
    md5 = tmp_path / "md5.txt"
    md5.write_text(hashlib.md5(listed).hexdigest() + "\n")
    cfg = base_config(stages=["download", "emit"], pool={"shard_size": 8},
                      download={"denylist": {"md5": str(md5)}})
    out = tmp_path / "run"
    m = run_pipeline(cfg, str(out), pool=str(pool))
    assert m["stages"]["download"]["dropped"] == {"denylisted": 1}
    shard = out / "pool" / "part-00000.parquet"
    t = pq.read_table(shard)
    assert t["image"].to_pylist() == [kept[0], None, kept[1], kept[2]]
    assert t["caption"].to_pylist() == ["c0", "c1", "c2", "c3"]
    assert read_shard_meta_ok(read_shard_meta, shard)
    scan(out, [listed], [draw(1)])
    # a rerun changes nothing: every shard is current (same uids, same input digests)
    m = run_pipeline(cfg, str(out), pool=str(pool))
    assert m["stages"]["download"]["shards_skipped"] == 1
    scan(out, [listed], [draw(1)])


def read_shard_meta_ok(read_shard_meta, shard: Path) -> bool:
    import fsspec

    meta = read_shard_meta(fsspec.filesystem("file"), str(shard))
    return bool(meta) and "source" in meta
