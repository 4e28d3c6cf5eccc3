"""Cheap checks on downloaded bytes, before anything decodes them in full.

Reading an image header costs microseconds; decoding a 50k x 50k "decompression bomb" costs
gigabytes. So every image is identified from its header (format, width, height), refused when
over the byte or pixel limits, and checked for an end marker so truncated JPEG/PNG files are
caught here rather than as garbage pixels in the score stage. Full decoding happens in the
score stage, which drops undecodable images with a reason.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

#: signatures of the formats we accept: bytes that start so but do not open are damaged
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF", b"BM")
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
           "TIFF": "tiff"}


def inspect(data: bytes, max_bytes: int, max_pixels: int
            ) -> tuple[str | None, int, int, str | None]:
    """(extension, width, height, error) for encoded image bytes; error None when fine."""
    if len(data) > max_bytes:
        return None, 0, 0, f"image too large: {len(data)} bytes > max_image_bytes {max_bytes}"
    if not data:
        return None, 0, 0, "empty response"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))  # lazy: reads the header only
            fmt, (w, h) = img.format, img.size
    except Image.DecompressionBombError as err:
        return None, 0, 0, f"decompression bomb: {err}"
    except Exception as err:  # noqa: BLE001 - PIL raises many types for garbage
        head = data[:15].lstrip().lower()
        if head.startswith((b"<!doctype", b"<html")):
            kind = "HTML page"
        elif data.startswith(MAGIC):
            kind = "truncated or corrupt image"
        else:
            kind = "not an image"
        return None, 0, 0, f"{kind} ({type(err).__name__})"
    if w * h > max_pixels:
        return None, w, h, f"decompression bomb: {w}x{h} = {w * h} pixels > {max_pixels}"
    if w <= 0 or h <= 0:
        return None, w, h, "image has zero size"
    ext = FORMATS.get(fmt or "", (fmt or "bin").lower())
    tail = data[-64:]
    if ext == "jpg" and b"\xff\xd9" not in tail:
        return ext, w, h, "truncated image (JPEG has no end marker)"
    if ext == "png" and b"IEND" not in tail:
        return ext, w, h, "truncated image (PNG has no IEND chunk)"
    if ext == "webp" and len(data) >= 12:
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared > len(data):
            return ext, w, h, "truncated image (WebP shorter than its header says)"
    return ext, w, h, None
