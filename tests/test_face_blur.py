"""Faces are blurred everywhere a curated image or a thumbnail appears (issue 23).

The reference is img2dataset's ``BoundingBoxBlurrer`` itself (DataComp's face blurring),
called here on the same arrays and boxes as :func:`curate.media.blur.blur_boxes`.

A pool brings JPEG bytes (each with its own background colour and a 2-px checkerboard "face"
that any blur flattens), a ``sha256`` and DataComp's ``face_bboxes`` (half the images have
one or two boxes, one of them at the border); the pipeline is language (drops the French
captions) → emit (Parquet + WebDataset) → report. No faces stage is needed: the pool's
column is the source.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import read_parts
from PIL import Image

from curate.media.blur import blur_boxes, blur_image_bytes
from curate.media.thumbs import thumbnail_uri

EN = "a photo of a red bicycle leaning on a wall near the old harbour"
FR = "une photo d'un vélo rouge appuyé contre un mur près du vieux port"
N = 16
FACE = [0.25, 0.25, 0.6, 0.7]  # the checkerboard's box, normalised
W, H = 128, 96


def _reference(rgb: np.ndarray, boxes: list) -> np.ndarray:
    from img2dataset.blurrer import BoundingBoxBlurrer

    return BoundingBoxBlurrer()(rgb, boxes)


BOX_SETS = {
    "one": [[0.2, 0.3, 0.5, 0.6]],
    "several": [[0.1, 0.1, 0.3, 0.25], [0.5, 0.4, 0.9, 0.95], [0.6, 0.05, 0.7, 0.2]],
    "border": [[0.0, 0.0, 0.2, 0.2], [0.85, 0.8, 1.0, 1.0]],
    "tiny": [[0.4, 0.4, 0.41, 0.41]],
    "whole": [[0.0, 0.0, 1.0, 1.0]],
}


@pytest.mark.parametrize("name", sorted(BOX_SETS))
@pytest.mark.parametrize("shape", [(512, 512, 3), (301, 517, 3), (40, 23, 3)])
def test_blur_boxes_matches_img2dataset(name, shape):
    rgb = np.random.default_rng(len(name) * 7 + shape[0]).integers(0, 256, shape, np.uint8)
    ours = blur_boxes(rgb, BOX_SETS[name])
    ref = _reference(rgb, BOX_SETS[name])
    assert ours.dtype == np.uint8 and ours.shape == rgb.shape
    assert int(np.abs(ours.astype(int) - ref.astype(int)).max()) <= 1
    if name != "tiny" or shape[0] > 100:  # a 1-px box on 40 x 23 rounds to nothing
        assert not np.array_equal(ours, rgb)


def test_no_boxes_is_unchanged():
    rgb = np.random.default_rng(1).integers(0, 256, (64, 48, 3), np.uint8)
    for boxes in (None, []):
        assert np.array_equal(blur_boxes(rgb, boxes), rgb)
        assert np.array_equal(_reference(rgb, []), rgb)
    data = _image(3, False)
    assert blur_image_bytes(data, []) == data and blur_image_bytes(data, None) == data


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_blur_image_bytes_keeps_the_format(fmt):
    rgb = np.asarray(Image.open(io.BytesIO(_image(5, True))).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    out = blur_image_bytes(buf.getvalue(), [FACE], fmt.lower())
    img = Image.open(io.BytesIO(out))
    assert img.format == fmt
    got = np.asarray(img.convert("RGB"), np.float64)
    ref = _reference(rgb, [FACE]).astype(np.float64)
    if fmt == "PNG":  # lossless: the reference exactly
        assert np.abs(got - ref).max() <= 1
    else:
        assert np.abs(got - ref).mean() < 3


# --------------------------------------------------------------------------- the pipeline
def _colour(i: int) -> tuple[int, int, int]:
    return ((i * 53) % 150 + 40, (i * 97) % 150 + 40, (i * 29) % 150 + 40)


def _boxes(i: int) -> list:
    if i % 4 == 0:
        return [FACE]
    if i % 4 == 1:
        return [FACE, [0.85, 0.0, 1.0, 0.2]]
    return []


def _image(i: int, face: bool = True) -> bytes:
    a = np.empty((H, W, 3), np.uint8)
    a[:] = _colour(i)
    y, x = np.mgrid[0:H, 0:W]
    checker = ((y // 2 + x // 2) % 2 * 255).astype(np.uint8)
    x1, y1, x2, y2 = int(FACE[0] * W), int(FACE[1] * H), int(FACE[2] * W), int(FACE[3] * H)
    if face:
        a[y1:y2, x1:x2] = checker[y1:y2, x1:x2, None]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)


def _inner(a: np.ndarray) -> np.ndarray:
    """The middle of the face box (scaled to ``a``'s size): a checkerboard or a flat grey."""
    h, w = a.shape[:2]
    return a[int(0.35 * h):int(0.6 * h), int(0.33 * w):int(0.52 * w)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session):
    from curate.driver import run_pipeline

    tmp = tmp_path_factory.mktemp("faces")
    images = [_image(i) for i in range(N)]
    pq.write_table(pa.table({
        "caption": [f"{EN if i % 2 else FR} #{i:02d}" for i in range(N)],
        "image": pa.array(images, pa.binary()),
        "sha256": [hashlib.sha256(b).hexdigest() for b in images],
        "face_bboxes": pa.array([_boxes(i) for i in range(N)],
                                pa.list_(pa.list_(pa.float32())))}), tmp / "pool.parquet")
    cfg = base_config(stages=["language", "emit", "report"], pool={"shard_size": 8},
                      language={"languages": ["en"]},
                      emit={"rows_per_shard": 5, "webdataset": True})
    out = tmp / "run"
    run_pipeline(cfg, str(out), pool=str(tmp / "pool.parquet"))
    return {"out": out, "cfg": cfg, "pool": str(tmp / "pool.parquet"), "images": images}


def _index(caption: str) -> int:
    return int(caption.rsplit("#", 1)[1])


def _boxes32(i: int) -> list:
    """The boxes as the pool stores them (float32), as the blur reads them."""
    return pa.array([_boxes(i)], pa.list_(pa.list_(pa.float32()))).to_pylist()[0]


def test_emit_blurs_every_curated_face_and_nothing_else(run):
    cur = read_parts(run["out"] / "curated")
    assert cur.num_rows == N // 2
    for row in cur.to_pylist():
        i = _index(row["caption"])
        orig = run["images"][i]
        assert row["sha256"] == hashlib.sha256(row["image"]).hexdigest()
        assert row["faces_blurred"] == bool(_boxes(i))
        if not _boxes(i):
            assert row["image"] == orig  # same bytes
            continue
        got, src = _decode(row["image"]), _decode(orig)
        ref = _reference(src.astype(np.uint8), _boxes32(i)).astype(np.float64)
        assert np.abs(got - ref).mean() < 2  # JPEG q95 re-encoding
        assert np.abs(_inner(got) - _inner(src)).mean() > 60  # the face is gone
        assert row["face_bboxes"] is not None and len(row["face_bboxes"]) == len(_boxes(i))
    emit = json.loads((run["out"] / "run.json").read_text())["stages"]["emit"]
    info = emit["steps"]["write"]["info"]
    assert info["faces_blurred"] is True
    assert info["images_with_faces"] == sum(1 for i in range(1, N, 2) if _boxes(i))


def test_webdataset_members_are_the_blurred_bytes(run):
    cur = read_parts(run["out"] / "curated")
    by_uid = dict(zip(cur["uid"].to_pylist(), cur["image"].to_pylist()))
    seen = 0
    for path in sorted((run["out"] / "curated" / "wds").glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                key = name[:-5]
                assert members[f"{key}.jpg"] == by_uid[meta["uid"]]
                assert meta["faces_blurred"] == bool(_boxes(_index(meta["caption"])))
                seen += 1
    assert seen == cur.num_rows


def _face_std(uri: str) -> float:
    return float(_inner(_decode(base64.b64decode(uri.split(",", 1)[1]))).std())


def _thumb_index(uri: str) -> int:
    """Which pool image a thumbnail shows: the background colour of its top-left corner."""
    a = _decode(base64.b64decode(uri.split(",", 1)[1]))[:6, :6].reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(np.array(_colour(k)) - a).sum() for k in range(N)]))


def test_thumbnail_blurs_faces_at_full_size():
    data = _image(4)
    plain, faces = thumbnail_uri(data), thumbnail_uri(data, faces=[FACE])
    assert _face_std(plain) > 60 > 20 > _face_std(faces)
    small = thumbnail_uri(data, size=64, faces=[FACE])
    ref = thumbnail_uri(blur_image_bytes(data, [FACE]), size=64)
    assert np.abs(_decode(base64.b64decode(small.split(",", 1)[1])) -
                  _decode(base64.b64decode(ref.split(",", 1)[1]))).mean() < 4


def test_report_thumbnails_blur_faces(run):
    html = (run["out"] / "reports" / "report.html").read_text(encoding="utf-8")
    uris = ["data:image/jpeg;base64," + u
            for u in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)]
    shown = {_thumb_index(u): _face_std(u) for u in uris}
    assert len(shown) >= 6 and {i % 2 for i in shown} == {0}  # the French pairs dropped
    for i, std in shown.items():
        assert (std < 20) if _boxes(i) else (std > 60), (i, std)


def test_audit_thumbnails_blur_faces(run):
    from curate.app.audit import sample

    items = sample(str(run["out"]), "language_not_selected", 20)
    pool = read_parts(run["out"] / "pool")
    index = {u: _index(c) for u, c in zip(pool["uid"].to_pylist(), pool["caption"].to_pylist())}
    assert len(items) == N // 2
    for it in items:
        i = index[it["uid"]]
        std = _face_std(it["thumb"])
        assert (std < 20) if _boxes(i) else (std > 60), (i, std)


def test_face_boxes_prefer_a_faces_stage_over_the_pool(run):
    from curate.core.io import write_parquet_atomic
    from curate.core.rundir import RunDir
    from curate.stages._emit_faces import add_faces_source, face_boxes
    from curate.stages._report_safety import SafetyView

    rd = RunDir(str(run["out"]))
    shard = rd.pool_shards()[0]
    pool = rd.read("pool", shard, ["uid", "face_bboxes"])
    uids = pool["uid"].to_pylist()
    from_pool = face_boxes(rd, shard, uids, ())
    assert set(from_pool) == {u for u, b in zip(uids, pool["face_bboxes"].to_pylist()) if b}
    folder = "faces_test_only"
    write_parquet_atomic(rd.fs, rd.shard_path(folder, shard), pa.table({
        "uid": uids[:2], "face_bboxes": pa.array([[], [[0.1, 0.1, 0.2, 0.2]]],
                                                 pa.list_(pa.list_(pa.float32())))}))
    try:
        got = face_boxes(rd, shard, uids, (folder,))
        assert uids[0] not in got and len(got[uids[1]]) == 1
        assert {u: got[u] for u in uids[2:] if u in got} == {
            u: b for u, b in from_pool.items() if u in uids[2:]}

        class Ref:
            def __init__(self, name, kind, folder):
                self.name, self.kind, self.folder = name, kind, folder

        class Pipe:
            def sensitive(self):
                return set()

        view = SafetyView.of(Pipe(), [Ref("faces", "faces", folder)])
        assert SafetyView.from_plan({"safety_view": view.to_plan()}).faces == (folder,)
        assert view.face_boxes(rd, shard, uids) == got
    finally:
        rd.fs.rm(rd.path(folder), recursive=True)
    src = add_faces_source([("images", [("image", "image")])], "faces")
    assert src[-1] == ("faces", [("face_bboxes", "face_bboxes")])
    assert add_faces_source(src, "faces") == src and add_faces_source(src, None) == src


@pytest.mark.parametrize("store", ["download", "pool"])
def test_blur_store_rewrites_the_store_once(tmp_path, store):
    from curate.core.io import read_shard_meta, write_parquet_atomic
    from curate.core.rundir import RunDir
    from curate.stages._face_store import MARK, blur_store

    rd = RunDir(str(tmp_path / "run"))
    folder = "images" if store == "download" else "pool"
    images = [_image(i) for i in range(4)]
    cols = {"uid": [f"u{i}" for i in range(4)], "image": pa.array(images, pa.binary())}
    if store == "download":
        cols.update(format=["jpg"] * 4, sha256=[hashlib.sha256(b).hexdigest() for b in images])
    meta = {"stage": "download", "fingerprint": "f", "input": "i", "output": "o"}
    path = rd.shard_path(folder, "part-00000.parquet")
    write_parquet_atomic(rd.fs, path, pa.table(cols), meta=meta)
    boxes = [[FACE], [], None, [FACE, [0.0, 0.0, 0.1, 0.1]]]
    n = blur_store(rd, "part-00000.parquet", "images" if store == "download" else None,
                   [f"u{i}" for i in range(4)], boxes)
    assert n == 2
    t = pq.read_table(path)
    got = t["image"].to_pylist()
    assert got[1] == images[1] and got[2] == images[2]
    for i in (0, 3):
        assert got[i] == blur_image_bytes(images[i], boxes[i], "jpg")
        assert np.abs(_inner(_decode(got[i])) - _inner(_decode(images[i]))).mean() > 60
    if store == "download":
        assert t["sha256"].to_pylist() == [hashlib.sha256(b).hexdigest() for b in got]
    footer = read_shard_meta(rd.fs, path)
    assert {k: footer[k] for k in meta} == meta and footer[MARK] == ["u0", "u3"]
    assert t["uid"].to_pylist() == cols["uid"]
    # a shard processed again: nothing is blurred twice
    assert blur_store(rd, "part-00000.parquet", "images" if store == "download" else None,
                      [f"u{i}" for i in range(4)], boxes) == 0
    assert pq.read_table(path)["image"].to_pylist() == got


def test_blur_faces_false_writes_the_originals(run):
    """Last: it reruns emit and the report on the module's run directory."""
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline

    data = run["cfg"].dump()
    data["emit"] = {**data.get("emit", {}), "blur_faces": False}
    run_pipeline(parse_pipeline(data), str(run["out"]), pool=run["pool"])
    cur = read_parts(run["out"] / "curated")
    for row in cur.to_pylist():
        assert row["image"] == run["images"][_index(row["caption"])]
        assert row["faces_blurred"] is False
    emit = json.loads((run["out"] / "run.json").read_text())["stages"]["emit"]
    info = emit["steps"]["write"]["info"]
    assert info["faces_blurred"] is False and info["images_with_faces"] > 0
    assert Path(run["out"] / "curated" / "wds").exists()


def test_emit_never_blurs_a_blurred_store_twice():
    """``faces.blur_store``: the store's bytes are already blurred; emit writes them as they
    are and marks them."""
    from curate.stages._emit_faces import blur_rows

    images = [_image(0), _image(2)]
    t = pa.table({"uid": ["a", "b"], "image": pa.array(images, pa.binary()),
                  "face_bboxes": pa.array([_boxes(0), []], pa.list_(pa.list_(pa.float32())))})
    out, n = blur_rows(t, True, stored=True)
    assert n == 1 and out["image"].to_pylist() == images
    assert out["faces_blurred"].to_pylist() == [True, False]
    out, n = blur_rows(t, True)
    assert out["image"].to_pylist()[1] == images[1] != out["image"].to_pylist()[0]
