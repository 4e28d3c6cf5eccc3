"""faces: face boxes per downloaded image (MTCNN), a tagger for blurring and audits.

The detector is MTCNN with the weights facenet-pytorch 2.6.0 ships (MIT, vendored in
``curate/models/faces/``; the cascade is curate's own code, matched to facenet-pytorch's
``MTCNN(keep_all=True).detect``: see ``curate.models.faces``). DataComp's face metadata came
from SCRFD (InsightFace), a newer single-stage detector; MTCNN finds fewer small, occluded
and profile faces (docs say how they compare).

Images: the nearest earlier download stage's ``image`` (the bytes as stored: the original
unless ``download.resize``), else the pool's ``image`` column. Each is decoded with PIL and
converted to RGB; EXIF orientation is NOT applied, so boxes refer to the pixel array as PIL
decodes it, before any transpose. An image that does not decode gets empty lists. A pool
that brings ``face_bboxes`` (DataComp's metadata) is used as is: no detection, no images
read, ``face_scores`` null.

Output ``faces/part-NNNNN.parquet``: ``uid``; ``face_bboxes`` list of ``[x1, y1, x2, y2]``
float32, divided by the decoded image's width and height and clipped to [0, 1] (DataComp's
convention); ``face_scores`` ONet's face probability per box, the same order (highest
first). Boxes with a score below ``min_score`` are left out. Not deciding: every pair kept.
The ``model`` step (on the driver, first) loads the networks once and records their files,
sha256s, source and licence. On a GPU when the cluster has one (``device: auto``), in
batches; CPU tasks otherwise.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from curate.config import Section
from curate.core import engine
from curate.core.engine import Resources
from curate.errors import ConfigError, InputError
from curate.stages.base import GlobalStep, ShardStep, Stage

_DEVICE: dict[str, str] = {}  # device setting -> what this worker process runs on

BOX = pa.list_(pa.float32())
SCHEMA = pa.schema([("uid", pa.string()), ("face_bboxes", pa.list_(BOX)),
                    ("face_scores", pa.list_(pa.float32()))])


class FacesConfig(Section):
    #: smallest face (pixels of the decoded image) the pyramid looks for (MTCNN's minsize)
    min_face_size: int = Field(20, ge=12)
    #: PNet, RNet, ONet probability thresholds
    thresholds: list[float] = [0.6, 0.7, 0.7]
    #: pyramid scale step
    factor: float = Field(0.709, gt=0, lt=1)
    #: leave out boxes whose ONet score is below this
    min_score: float = Field(0.0, ge=0, le=1)
    #: auto: a GPU when the cluster has one, else CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: images per PNet batch (same-size images) and per decode chunk
    batch_size: int = Field(32, ge=1)
    #: blur the faces in the run directory's image store right after detection, as DataComp
    #: did (``curate.stages._face_store``): the originals are then gone
    blur_store: bool = False

    @field_validator("thresholds")
    @classmethod
    def _three(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or not all(0 <= t <= 1 for t in v):
            raise ValueError("thresholds: three probabilities, PNet, RNet, ONet")
        return v


def decode_rgb(data: bytes | None) -> np.ndarray | None:
    """RGB ``uint8`` HWC as PIL decodes ``data`` (no EXIF transpose); None if it does not."""
    from PIL import Image

    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - an undecodable image is a row with no faces
        return None


def normalised(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel boxes [n, 4] divided by the image's size, clipped to [0, 1] (float32)."""
    scale = np.array([width, height, width, height], np.float64)
    return np.clip(boxes / scale, 0.0, 1.0).astype(np.float32)


class FacesStage(Stage):
    kind = "faces"
    folder = "faces"
    view = "faces"
    Config = FacesConfig
    schema = SCHEMA
    joins = ()
    help = "Face boxes (MTCNN, facenet-pytorch's weights) per image, normalised; a tagger."
    doc_notes = {"joins": "emit joins `face_bboxes` itself"}

    def steps(self) -> list:
        return [GlobalStep.on_driver("model", self._check), ShardStep()]

    # ------------------------------------------------------------------ driver
    def _brings_boxes(self) -> bool:
        import pyarrow.parquet as pq

        shards = self.shards or self.rd.pool_shards()
        if not shards:
            return False
        with self.rd.fs.open(self.rd.shard_path("pool", shards[0]), "rb") as f:
            return "face_bboxes" in pq.read_schema(f).names

    def preflight(self) -> list[str]:
        """Images to detect faces in, unless the pool brings the boxes (the weights are
        bundled)."""
        from curate.stages._needs import images

        return images(self, instead=("face_bboxes",))

    def _check(self, _: object) -> dict[str, Any]:
        from curate.models.faces import describe, load_nets

        if self._brings_boxes():
            return {"model": "none: the pool brings face_bboxes", "detector": None}
        if self.section.device == "cuda" and not engine.cluster_gpus():
            raise ConfigError(f"{self.name}.device: cuda but the cluster has no GPU "
                              "(use auto or cpu)")
        load_nets("cpu")  # the weights load and fit, before any worker starts
        return {"model": "MTCNN (facenet-pytorch 2.6.0 weights)", "detector": "mtcnn",
                **describe()}

    def _gpus(self) -> int:
        return 0 if self.section.device == "cpu" else engine.cluster_gpus()

    def resources(self) -> Resources:
        gpus = self._gpus()
        if gpus:
            return Resources(num_cpus=max(1, engine.cluster_cpus() // gpus), num_gpus=1)
        return Resources(num_cpus=1)

    def num_actors(self) -> int | None:
        return self._gpus() or None

    # ------------------------------------------------------------------ worker
    def setup(self) -> None:
        if (self.state.get("model") or {}).get("detector"):
            self._nets()

    def _device(self) -> str:
        """Once per worker process: cuda when this worker holds a GPU (and may use it)."""
        from curate.models.faces import pick_device, set_threads

        if self.section.device not in _DEVICE:
            set_threads(engine.assigned_cpus())
            _DEVICE[self.section.device] = pick_device(self.section.device,
                                                       engine.assigned_gpus())
        return _DEVICE[self.section.device]

    def _nets(self) -> Any:
        from curate.models.faces import load_nets

        return load_nets(self._device())

    def inputs(self, shard: str) -> pa.Table:
        t = self.survivors(shard)
        if "face_bboxes" in t.column_names:
            return t.select(["uid", "face_bboxes"])
        dl = self.previous("download")
        if dl is not None:
            return pa.table({"uid": t["uid"].combine_chunks(), "image": self.rd.column_for(
                dl.folder, shard, t["uid"], "image")})
        if "image" not in t.column_names:
            raise InputError(f"{self.name}: needs images: run download before it, or bring "
                             "an image column (or face_bboxes) in the pool")
        return t.select(["uid", "image"])

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        uids = inputs["uid"].combine_chunks()
        if "face_bboxes" in inputs.column_names:
            t = pa.table({"uid": uids,
                          "face_bboxes": pc.cast(inputs["face_bboxes"], pa.list_(BOX)),
                          "face_scores": pa.nulls(len(uids), pa.list_(pa.float32()))})
        else:
            boxes, scores = self.detect_images(inputs["image"])
            t = pa.table({"uid": uids, "face_bboxes": pa.array(boxes, pa.list_(BOX)),
                          "face_scores": pa.array(scores, pa.list_(pa.float32()))})
        if self.section.blur_store:  # once per uid: the store's footer lists what it blurred
            from curate.stages._face_store import blur_store

            dl = self.previous("download")
            blur_store(self.rd, shard, dl.folder if dl else None, t["uid"].to_pylist(),
                       t["face_bboxes"].to_pylist())
        return t

    def detect_images(self, images: pa.ChunkedArray | pa.Array
                      ) -> tuple[list[list[list[float]]], list[list[float]]]:
        """Normalised boxes and scores per image bytes, ``batch_size`` images at a time."""
        from curate.models.faces import detect

        s = self.section
        nets, device = self._nets(), self._device()
        boxes: list[list[list[float]]] = []
        scores: list[list[float]] = []
        n = len(images)
        for start in range(0, n, s.batch_size):
            chunk = images.slice(start, s.batch_size).to_pylist()
            arrays = [decode_rgb(b) for b in chunk]
            ok = [a for a in arrays if a is not None]
            found = iter(detect(ok, nets, min_face_size=s.min_face_size,
                                thresholds=tuple(s.thresholds), factor=s.factor,
                                batch_size=s.batch_size, device=device))
            for a in arrays:
                if a is None:
                    boxes.append([])
                    scores.append([])
                    continue
                b, p = next(found)
                keep = p >= s.min_score
                boxes.append(normalised(b[keep], a.shape[1], a.shape[0]).tolist())
                scores.append(p[keep].tolist())
        return boxes, scores
