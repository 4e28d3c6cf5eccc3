"""Hashes of one image for dedup: its bytes, its decoded pixels, its perceptual hash.

- bytes: the first 8 bytes of sha256 of the encoded file, as a uint64: the same file under
  many URLs.
- pixels: the first 8 bytes of sha256 of (width, height, RGB pixels): the same picture
  re-encoded losslessly or with other metadata (EXIF, PNG chunks).
- perceptual: ``imagehash.phash`` (64-bit DCT hash of the 32x32 greyscale image; Zauner 2010,
  as the imagehash package computes it), as a uint64: re-encoded, resized, lightly cropped
  copies land within a few bits.

Decoding is PIL's, with the same pixel cap as the download checks; an image that does not
decode keeps its bytes hash only.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np

#: larger images are not decoded (pixel and perceptual hashes stay null): decompression bombs
MAX_PIXELS = 89_478_485


def _u64(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


def image_hashes(data: bytes) -> tuple[int, int | None, int | None]:
    """(bytes hash, pixel hash or None, perceptual hash or None) of encoded image bytes."""
    import imagehash
    from PIL import Image

    b = _u64(hashlib.sha256(data).digest())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.size[0] * img.size[1] > MAX_PIXELS:
                return b, None, None
            rgb = img.convert("RGB")
    except Exception:  # noqa: BLE001 - PIL raises many types for garbage
        return b, None, None
    w, h = rgb.size
    px = _u64(hashlib.sha256(np.array([w, h], "<u4").tobytes() + rgb.tobytes()).digest())
    bits = imagehash.phash(rgb).hash.reshape(-1)  # 64 booleans, row-major, MSB first
    p = int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])
    return b, px, p
