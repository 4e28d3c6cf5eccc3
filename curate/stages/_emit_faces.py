"""Faces in curated images and on pages: where the boxes come from, and emit's blur.

Face boxes (``face_bboxes``: per pair a list of ``[x1, y1, x2, y2]`` normalised to the image
as decoded, DataComp's convention) come from the nearest ``faces`` stage before the reader
(``faces/part-NNNNN.parquet``), else from the pool's own ``face_bboxes`` column (DataComp's
metadata ships them); a faces stage's value wins over the pool's, as every stage column
does in emit's join. Without either, nothing is blurred.

Emit blurs every curated image that has a box (:func:`blur_rows`, with
:func:`curate.media.blur.blur_image_bytes`: img2dataset's ``BoundingBoxBlurrer``, DataComp's
face blurring), recomputes its ``sha256`` (the curated bytes changed) and marks it in a bool
column ``faces_blurred``; an image without a box keeps its bytes. ``emit.blur_faces: false``
writes the originals (``faces_blurred`` false everywhere); run.json records which.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.rundir import RunDir
from curate.media.blur import blur_image_bytes, has_boxes

COLUMN = "face_bboxes"
BOXES_TYPE = pa.list_(pa.list_(pa.float32()))


def face_folders(refs: list[Any]) -> tuple[str, ...]:
    """Folders of the faces stages among ``refs`` (the nearest last)."""
    return tuple(r.folder for r in refs if r.kind == "faces")


def pool_has_faces(rd: RunDir, shard: str) -> bool:
    path = rd.shard_path("pool", shard)
    if not rd.fs.exists(path):
        return False
    with rd.fs.open(path, "rb") as f:
        return COLUMN in pq.read_schema(f).names


def face_boxes(rd: RunDir, shard: str, uids: list[str], folders: tuple[str, ...]
               ) -> dict[str, list]:
    """uid -> its boxes (non-empty lists only) for the pairs of one pool shard: the pool's
    ``face_bboxes``, overridden by each faces stage in ``folders`` that wrote the shard."""
    if not uids:
        return {}
    want = pa.array(sorted(set(uids)), pa.string())
    out: dict[str, list] = {}
    sources = (["pool"] if pool_has_faces(rd, shard) else []) + [
        f for f in folders if rd.fs.exists(rd.shard_path(f, shard))]
    for folder in sources:
        t = rd.read(folder, shard, ["uid", COLUMN])
        t = t.filter(pc.is_in(t["uid"], value_set=want))
        for u, b in zip(t["uid"].to_pylist(), t[COLUMN].to_pylist()):
            if folder != "pool" or b is not None:
                out[u] = b
    return {u: b for u, b in out.items() if has_boxes(b)}


def add_faces_source(sources: list, folder: str | None) -> list:
    """emit's join list with the faces stage's ``face_bboxes`` (unless its kind already
    joins it): DataComp ships the boxes in its metadata, so the curated rows carry them."""
    if folder is None:
        return sources
    for f, cols in sources:
        if f == folder and any(c == COLUMN for c, _ in cols):
            return sources
    return [*sources, (folder, [(COLUMN, COLUMN)])]


def blur_rows(table: pa.Table, enabled: bool, stored: bool = False) -> tuple[pa.Table, int]:
    """Blur the faces of every row of ``table`` (curated rows with ``image`` and
    ``face_bboxes``); returns the table, with ``faces_blurred`` and the new ``sha256``, and
    how many images have faces. No ``face_bboxes`` column: the table as it is. ``stored``:
    the faces stage already blurred the image store (``faces.blur_store``): the bytes are
    written as they are (never blurred twice) and marked blurred where there are boxes."""
    if COLUMN not in table.column_names:
        return table, 0
    boxes = table[COLUMN].to_pylist()
    with_faces = [has_boxes(b) for b in boxes]
    n = int(sum(with_faces))
    blurred = [False] * table.num_rows
    if stored and "image" in table.column_names:
        images = table["image"].to_pylist()
        blurred = [f and img is not None for f, img in zip(with_faces, images)]
    elif enabled and n and "image" in table.column_names:
        images = table["image"].to_pylist()
        fmts = (table["format"].to_pylist() if "format" in table.column_names
                else [None] * table.num_rows)
        shas = table["sha256"].to_pylist() if "sha256" in table.column_names else None
        for i, faces in enumerate(with_faces):
            if not faces or images[i] is None:
                continue
            try:
                images[i] = blur_image_bytes(images[i], boxes[i], fmts[i])
            except Exception:  # noqa: BLE001 - undecodable bytes stay as they are, unmarked
                continue
            blurred[i] = True
            if shas is not None:
                shas[i] = hashlib.sha256(images[i]).hexdigest()
        table = _replace(table, "image", pa.array(images, table.schema.field("image").type))
        if shas is not None:
            table = _replace(table, "sha256", pa.array(shas, pa.string()))
    if "faces_blurred" in table.column_names:
        table = table.drop_columns(["faces_blurred"])
    return table.append_column("faces_blurred", pa.array(blurred, pa.bool_())), n


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)
