"""The ``faces`` stage and its MTCNN detector.

References independent of the code under test: a box measured by hand on a real photo
(tests/data/faces/README.md), faces pasted at known places, images drawn with no face, a
brute-force NMS written here, and (when importable) facenet-pytorch's own ``MTCNN``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import read_parts
from PIL import Image, ImageDraw

from curate.core.rundir import step_info
from curate.driver import run_pipeline
from curate.models.faces import _nms_min, detect, load_nets

DATA = Path(__file__).parent / "data" / "faces"
PHOTO = DATA / "astronaut_256.jpg"
#: measured by hand on a 16-px grid (pixels of the 256x256 photo): hairline to chin
HAND_BOX = (90.0, 36.0, 133.0, 90.0)
#: the face in the 256x256 photo with a margin (hair, neck), and where the face sits in it
CROP = (60, 10, 160, 110)
FACE_IN_CROP = (30.0, 26.0, 73.0, 80.0)


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def no_face_images() -> list[Image.Image]:
    w, h = 160, 120
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    grad = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 128.0)], axis=2).astype(np.uint8)
    out = [Image.fromarray(grad), Image.new("RGB", (200, 200), (200, 180, 150))]
    shapes = Image.new("RGB", (240, 180), (30, 60, 120))
    d = ImageDraw.Draw(shapes)
    d.rectangle((20, 20, 90, 70), fill=(240, 200, 40))
    d.ellipse((120, 40, 210, 150), fill=(200, 30, 30))
    d.polygon([(30, 160), (80, 100), (110, 170)], fill=(40, 200, 90))
    out.append(shapes)
    return out


def pasted(scale: float, at: tuple[int, int], canvas=(480, 360)) -> tuple[Image.Image, tuple]:
    """The photo's face crop scaled by ``scale`` at ``at`` on a grey canvas, and where the
    face then is (pixels)."""
    face = Image.open(PHOTO).convert("RGB").crop(CROP)
    size = (round(face.width * scale), round(face.height * scale))
    img = Image.new("RGB", canvas, (128, 128, 128))
    img.paste(face.resize(size, Image.LANCZOS), at)
    box = tuple(at[i % 2] + FACE_IN_CROP[i] * scale for i in range(4))
    return img, box


# ------------------------------------------------------------------------ the detector


def test_real_photo_one_face_where_measured():
    (boxes, scores), = detect([rgb(Image.open(PHOTO))], load_nets())
    assert boxes.shape == (1, 4) and scores.shape == (1,)
    assert scores[0] > 0.99
    assert iou(boxes[0], HAND_BOX) > 0.6, boxes[0]


def test_images_with_no_face_give_no_boxes():
    found = detect([rgb(i) for i in no_face_images()], load_nets())
    assert [len(b) for b, _ in found] == [0, 0, 0]


@pytest.mark.parametrize("scale,at", [(1.0, (40, 30)), (0.6, (300, 200)), (2.0, (150, 80))])
def test_pasted_faces_found_where_placed(scale, at):
    img, want = pasted(scale, at)
    (boxes, _), = detect([rgb(img)], load_nets())
    assert len(boxes) == 1
    assert iou(boxes[0], want) > 0.5, (boxes[0], want)


def test_two_faces_in_one_image_and_batching_changes_nothing():
    img, a = pasted(1.0, (20, 20))
    img.paste(Image.open(PHOTO).convert("RGB").crop(CROP).resize((150, 150)), (300, 150))
    b = tuple(v * 1.5 + o for v, o in zip(FACE_IN_CROP, (300, 150, 300, 150)))
    many = [rgb(img), rgb(Image.open(PHOTO)), rgb(no_face_images()[2]), rgb(img)]
    alone = [detect([m], load_nets())[0] for m in many]
    together = detect(many, load_nets(), batch_size=2)
    for (b1, s1), (b2, s2) in zip(alone, together):
        np.testing.assert_allclose(b1, b2, atol=1e-3)
        np.testing.assert_allclose(s1, s2, atol=1e-5)
    boxes = together[0][0]
    assert len(boxes) == 2
    assert max(iou(x, a) for x in boxes) > 0.5 and max(iou(x, b) for x in boxes) > 0.5


def test_min_nms_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (60, 2))
    wh = rng.uniform(5, 40, (60, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, 60)
    owner = rng.integers(0, 3, 60)

    def over(i, j):
        iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1
        ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1
        inter = max(iw, 0) * max(ih, 0)
        area = [(boxes[k, 2] - boxes[k, 0] + 1) * (boxes[k, 3] - boxes[k, 1] + 1)
                for k in (i, j)]
        return inter / min(area)

    def reference():
        keep = []
        for i in sorted(range(60), key=lambda k: -scores[k]):
            if all(owner[j] != owner[i] or over(i, j) <= 0.7 for j in keep):
                keep.append(i)
        return keep

    assert list(_nms_min(boxes, scores, owner, 0.7)) == reference()


def test_same_boxes_as_facenet_pytorch():
    facenet = pytest.importorskip("facenet_pytorch")
    imgs = [Image.open(PHOTO).convert("RGB"), pasted(1.3, (60, 40))[0], no_face_images()[2]]
    ref = facenet.MTCNN(keep_all=True, device="cpu")
    for img in imgs:
        want, probs = ref.detect(img)
        (boxes, scores), = detect([rgb(img)], load_nets())
        if want is None:
            assert len(boxes) == 0
            continue
        order = np.argsort(-np.asarray(probs, float))
        np.testing.assert_allclose(boxes, np.asarray(want, float)[order], atol=1e-2)
        np.testing.assert_allclose(scores, np.asarray(probs, float)[order], atol=1e-5)


def test_weights_are_plain_state_dicts():
    import torch

    from curate.models.faces import DIR, FILES, describe

    for name in FILES.values():
        sd = torch.load(DIR / name, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in sd.values())
    info = describe()
    assert set(info["sha256"]) == {"pnet", "rnet", "onet"} and "MIT" in info["licence"]


# ------------------------------------------------------------------------ the stage


def _pool(tmp_path, images: list[bytes | None], **extra) -> str:
    n = len(images)
    pq.write_table(pa.table({"caption": [f"picture {i}" for i in range(n)],
                             "image": pa.array(images, pa.binary()), **extra}),
                   tmp_path / "pool.parquet")
    return str(tmp_path / "pool.parquet")


def test_stage_writes_normalised_boxes(tmp_path, ray_session):
    face, placed = pasted(1.0, (200, 150))
    images = [PHOTO.read_bytes(), jpeg(no_face_images()[0]), b"not an image", jpeg(face),
              jpeg(no_face_images()[2])]
    pool = _pool(tmp_path, images)
    cfg = base_config(stages=["faces"], pool={"shard_size": 2}, faces={"batch_size": 2})
    run_pipeline(cfg, str(tmp_path / "run"), pool=pool)
    parts = sorted((tmp_path / "run" / "faces").glob("part-*.parquet"))
    assert len(parts) == 3
    t = read_parts(tmp_path / "run" / "faces")
    assert t.schema.field("face_bboxes").type == pa.list_(pa.list_(pa.float32()))
    assert t.schema.field("face_scores").type == pa.list_(pa.float32())
    assert t.schema.names[:3] == ["uid", "face_bboxes", "face_scores"]
    pool_t = read_parts(tmp_path / "run" / "pool")
    caption = dict(zip(pool_t["uid"].to_pylist(), pool_t["caption"].to_pylist()))
    got = {int(caption[u].split()[1]): (b, s) for u, b, s in zip(
        t["uid"].to_pylist(), t["face_bboxes"].to_pylist(), t["face_scores"].to_pylist())}
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert [len(got[i][0]) for i in range(5)] == [1, 0, 0, 1, 0]
    photo = [v * 256 for v in got[0][0][0]]
    assert iou(photo, HAND_BOX) > 0.6
    w, h = face.size
    box = [got[3][0][0][i] * (w, h)[i % 2] for i in range(4)]
    assert iou(box, placed) > 0.5
    for boxes, scores in got.values():
        assert len(boxes) == len(scores)
        assert all(len(b) == 4 and all(0 <= v <= 1 for v in b) for b in boxes)


def test_pool_face_bboxes_pass_through(tmp_path, ray_session):
    """The pool's boxes come out as they went in (its images are not even images), and the
    model step says no detector ran."""
    import json

    given = [[[0.1, 0.2, 0.3, 0.4]], [], [[0.5, 0.5, 0.9, 0.95], [0.0, 0.0, 0.1, 0.1]]]
    pool = _pool(tmp_path, [b"x", b"y", b"z"],
                 face_bboxes=pa.array(given, pa.list_(pa.list_(pa.float64()))))
    cfg = base_config(stages=["faces"], pool={"shard_size": 8})
    run_pipeline(cfg, str(tmp_path / "run"), pool=pool)
    t = read_parts(tmp_path / "run" / "faces")
    pool_t = read_parts(tmp_path / "run" / "pool")
    caption = dict(zip(pool_t["uid"].to_pylist(), pool_t["caption"].to_pylist()))
    got = {int(caption[u].split()[1]): b for u, b in zip(t["uid"].to_pylist(),
                                                         t["face_bboxes"].to_pylist())}
    for i, boxes in enumerate(given):
        np.testing.assert_allclose(np.array(got[i], float).reshape(-1, 4),
                                   np.array(boxes, float).reshape(-1, 4), atol=1e-6)
    assert t["face_scores"].null_count == 3
    info = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["faces"]
    assert info["steps"]["model"]["info"]["detector"] is None


def test_stage_reads_the_download_stages_images(tmp_path, ray_session):
    """After download, the images are download's stored bytes (here the originals)."""
    from curate.media.loopback import LoopbackServer, Route

    face, placed = pasted(1.2, (120, 90))
    routes = {"/face.jpg": Route(jpeg(face), "image/jpeg"),
              "/shapes.jpg": Route(jpeg(no_face_images()[2]), "image/jpeg")}
    with LoopbackServer(routes) as srv:
        pq.write_table(pa.table({"url": [srv.url("/face.jpg"), srv.url("/shapes.jpg")],
                                 "caption": ["picture 0", "picture 1"]}),
                       tmp_path / "pool.parquet")
        cfg = base_config(stages=["download", "faces"])
        run_pipeline(cfg, str(tmp_path / "run"), pool=str(tmp_path / "pool.parquet"))
    t = read_parts(tmp_path / "run" / "faces")
    pool_t = read_parts(tmp_path / "run" / "pool")
    caption = dict(zip(pool_t["uid"].to_pylist(), pool_t["caption"].to_pylist()))
    got = {caption[u]: b for u, b in zip(t["uid"].to_pylist(), t["face_bboxes"].to_pylist())}
    assert len(got["picture 1"]) == 0 and len(got["picture 0"]) == 1
    w, h = face.size
    assert iou([got["picture 0"][0][i] * (w, h)[i % 2] for i in range(4)], placed) > 0.5


def _face_region(data: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)
    x1, y1, x2, y2 = (int(v) for v in HAND_BOX)
    return a[y1:y2, x1:x2]


@pytest.mark.parametrize("blur_store", [False, True])
def test_detected_faces_are_blurred_at_emit_and_with_blur_store_in_the_store(
        tmp_path, ray_session, blur_store):
    """faces -> emit end to end: the curated photo's face is blurred (far from the original
    there), the face-less image is written byte for byte; with blur_store the pool shard's
    own bytes are blurred too (the originals are gone) and emit does not blur twice."""
    original = PHOTO.read_bytes()
    plain = jpeg(no_face_images()[2])
    pool = _pool(tmp_path, [original, plain])
    cfg = base_config(stages=["faces", "emit"], pool={"shard_size": 8},
                      faces={"blur_store": blur_store}, emit={"rows_per_shard": 10})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=pool)
    cur = read_parts(tmp_path / "run" / "curated")
    by_caption = dict(zip(cur["caption"].to_pylist(), cur["image"].to_pylist()))
    blurred = dict(zip(cur["caption"].to_pylist(), cur["faces_blurred"].to_pylist()))
    assert blurred == {"picture 0": True, "picture 1": False}
    assert by_caption["picture 1"] == plain
    diff = np.abs(_face_region(by_caption["picture 0"]) - _face_region(original)).mean()
    assert diff > 5, diff  # the face region changed (blurred)
    store = read_parts(tmp_path / "run" / "pool")
    stored = dict(zip(store["caption"].to_pylist(), store["image"].to_pylist()))
    if blur_store:
        assert stored["picture 0"] != original and stored["picture 1"] == plain
        assert by_caption["picture 0"] == stored["picture 0"]  # not blurred a second time
    else:
        assert stored["picture 0"] == original  # the store keeps the originals
    info = step_info(m["stages"]["emit"], "write")
    assert info["faces_blurred"] is True and info["images_with_faces"] == 1
