"""Small JPEG thumbnails as ``data:`` URIs, for self-contained pages (report, audit).

A thumbnail of a pair that may be unsafe (``blur``: its punsafe is above the report's line,
or no NSFW stage scored it in a run that scores NSFW) is blurred before it is encoded, so the
page carries no recognisable picture of it: a Gaussian of radius ``size / BLUR_DIVISOR``
(20 px at 160) over an image already reduced to ``size`` leaves colour blobs, no shapes.
"""

from __future__ import annotations

import base64
import io

#: the blur radius is the thumbnail's longest side over this
BLUR_DIVISOR = 8


def thumbnail_uri(data: bytes | None, size: int = 160, quality: int = 70,
                  blur: bool = False) -> str | None:
    """A JPEG thumbnail (longest side ``size``) of encoded image bytes, blurred with
    ``blur``; None when the bytes are missing or do not decode."""
    if not data:
        return None
    from PIL import Image, ImageFilter

    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale
        img = img.convert("RGB")
        img.thumbnail((size, size))
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(max(2, size // BLUR_DIVISOR)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
    except Exception:  # noqa: BLE001 - an undecodable image shows as its absence
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
