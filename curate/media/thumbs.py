"""Small JPEG thumbnails as ``data:`` URIs, for self-contained pages (report, audit).

A thumbnail of a pair that may be unsafe (``blur``: its punsafe is above the report's line,
or no NSFW stage scored it in a run that scores NSFW) is blurred before it is encoded, so the
page carries no recognisable picture of it: a Gaussian of radius ``size / BLUR_DIVISOR``
(20 px at 160) over an image already reduced to ``size`` leaves colour blobs, no shapes.
Faces (``faces``: normalised boxes, a faces stage's or the pool's ``face_bboxes``) are
blurred first, at full size, exactly as the curated image is (:mod:`curate.media.blur`),
so a page shows a face no more than the curated set does.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from curate.media.blur import blur_boxes, has_boxes

#: the blur radius is the thumbnail's longest side over this
BLUR_DIVISOR = 8


def thumbnail_uri(data: bytes | None, size: int = 160, quality: int = 70,
                  blur: bool = False, faces: Any = None) -> str | None:
    """:func:`thumbnail_jpeg` as a ``data:`` URI (for a self-contained HTML page)."""
    jpeg = thumbnail_jpeg(data, size, quality, blur, faces)
    return None if jpeg is None else (
        "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"))


def thumbnail_jpeg(data: bytes | None, size: int = 160, quality: int = 70,
                   blur: bool = False, faces: Any = None) -> bytes | None:
    """A JPEG thumbnail (longest side ``size``) of encoded image bytes, blurred with
    ``blur``, its ``faces`` boxes blurred at full size before it is reduced; None when the
    bytes are missing or do not decode."""
    if not data:
        return None
    from PIL import Image, ImageFilter

    try:
        img = Image.open(io.BytesIO(data))
        if has_boxes(faces):  # full size: the boxes are of the image as decoded
            img = Image.fromarray(blur_boxes(np.asarray(img.convert("RGB")), faces))
        else:
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale
        img = img.convert("RGB")
        img.thumbnail((size, size))
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(max(2, size // BLUR_DIVISOR)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
    except Exception:  # noqa: BLE001 - an undecodable image shows as its absence
        return None
    return buf.getvalue()
