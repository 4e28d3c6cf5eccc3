"""Small JPEG thumbnails as ``data:`` URIs, for self-contained pages (report, audit)."""

from __future__ import annotations

import base64
import io


def thumbnail_uri(data: bytes | None, size: int = 160, quality: int = 70) -> str | None:
    """A JPEG thumbnail (longest side ``size``) of encoded image bytes; None when the bytes
    are missing or do not decode."""
    if not data:
        return None
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale
        img = img.convert("RGB")
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
    except Exception:  # noqa: BLE001 - an undecodable image shows as its absence
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
