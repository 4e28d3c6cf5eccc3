"""``faces.blur_store: true``: blur the image store once, right after detection, as DataComp did.

DataComp distributed its pool with faces already blurred; with ``blur_store`` the faces stage
does the same to the run's image store: after it wrote its own shard, its worker calls
:func:`blur_store`, which rewrites the shard of the store — download's
``images/part-N.parquet`` ``image`` column, or the pool shard's ``image`` when the pool
brought the bytes — with every face blurred (:func:`curate.media.blur.blur_image_bytes`,
img2dataset's ``BoundingBoxBlurrer``), and ``sha256`` recomputed for the rewritten rows
(download's shard). Every later stage, page and emit then only ever reads blurred bytes.

Why a later stage may rewrite another stage's file here: the store is the one copy of the
pixels, and blurring it in place is the point (no unblurred copy stays in the run
directory). The rewrite is atomic (a temporary sibling and a rename,
:func:`curate.core.io.write_parquet_atomic`) and keeps the file's rows, their order, every
other column and its footer; so what resume looks at does not change. Download's footer
(fingerprint, input digest, ``output`` digest, which is a digest of the kept uids) is the
same, so download does not redo the shard, and a pool shard keeps its uids and row order,
so every count and uid digest of the run stays valid. The footer gains
``faces_blurred_uids``: the uids already blurred, so a faces shard processed again does not
blur an image twice. A shard download (or ingest) writes again — ``--retry-failed``, a
changed pool — comes back unblurred, without that key: the faces stage must then process
that shard again (its input digest should cover the store shard's footer) so the new bytes
are blurred too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.io import META_KEY, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.media.blur import blur_image_bytes, has_boxes

#: footer key: the uids whose image in this store shard is already blurred
MARK = "faces_blurred_uids"


def blur_store(rd: RunDir, shard: str, download_folder: str | None, uids: list[str],
               boxes: list[Any]) -> int:
    """Rewrite one shard of the image store with the faces of ``uids`` (``boxes[i]``: the
    normalised boxes of ``uids[i]``) blurred; returns how many images it blurred.

    ``download_folder``: the download stage's folder (its shard holds the images), or None
    when the pool brought the bytes (the pool shard is rewritten). Pairs without boxes, or
    without an image, are left as they are; so is a shard with nothing to blur (no write).
    """
    import json

    folder = download_folder or "pool"
    path = rd.shard_path(folder, shard)
    todo = {u: b for u, b in zip(uids, boxes) if has_boxes(b)}
    if not todo or not rd.fs.exists(path):
        return 0
    with rd.fs.open(path, "rb") as f:
        table = pq.read_table(f)
    md = dict(table.schema.metadata or {})
    meta = json.loads(md[META_KEY]) if META_KEY in md else {}
    done = set(meta.get(MARK, []))
    if "image" not in table.column_names:
        return 0
    want = pa.array(sorted(set(todo) - done), pa.string())
    rows = pc.is_in(table["uid"], value_set=want).to_numpy(zero_copy_only=False)
    if not rows.any():
        return 0
    images = table["image"].to_pylist()
    tuids = table["uid"].to_pylist()
    fmts = (table["format"].to_pylist() if "format" in table.column_names
            else [None] * table.num_rows)
    shas = table["sha256"].to_pylist() if "sha256" in table.column_names else None
    n = 0
    for i in rows.nonzero()[0]:
        if images[i] is None:
            continue
        images[i] = blur_image_bytes(images[i], todo[tuids[i]], fmts[i])
        if shas is not None:
            shas[i] = hashlib.sha256(images[i]).hexdigest()
        done.add(tuids[i])
        n += 1
    schema = table.schema
    table = table.set_column(schema.get_field_index("image"), schema.field("image"),
                             pa.array(images, schema.field("image").type))
    if shas is not None:
        table = table.set_column(schema.get_field_index("sha256"), schema.field("sha256"),
                                 pa.array(shas, schema.field("sha256").type))
    meta[MARK] = sorted(done)
    write_parquet_atomic(rd.fs, path, table.replace_schema_metadata(md), meta=meta)
    return n
