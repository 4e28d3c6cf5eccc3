"""PDQ, Meta's 256-bit perceptual hash (ThreatExchange), of encoded image bytes.

The hash lists child-safety organisations share carry PDQ hashes as 64 hex characters,
as ThreatExchange writes them (``pdq/cpp/common/pdqhashtypes.cpp``: the 16-bit words
``w[15] .. w[0]`` printed ``%04hx`` each, bit ``k`` of the hash in ``w[k >> 4]`` at
``k & 15``): the hex read as one 256-bit integer has bit ``k`` at position ``k``.
``pdqhash.compute`` returns the bits most significant first (its ``hash_to_vector``
reverses ``k = 0..255``), so the hex is that vector read MSB first, and the packed form
here is its 32 bytes in that order, as 4 big-endian words (``uint64``, native order in
memory): word 0 holds hex digits 0..15.

Decoding is PIL's, with the download checks' pixel cap (:data:`imagehashes.MAX_PIXELS`);
no EXIF rotation (ThreatExchange's hasher reads the pixels as stored). An image that does
not decode has no PDQ hash (``known`` False).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from curate.media.imagehashes import MAX_PIXELS

WORDS = 4  # uint64 words per hash


def decode_rgb(data: bytes) -> np.ndarray | None:
    """(h, w, 3) uint8 pixels of encoded bytes, or None (not an image, over the cap)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.size[0] * img.size[1] > MAX_PIXELS:
                return None
            return np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - PIL raises many types for garbage
        return None


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """256 bits, most significant first -> 4 uint64 words."""
    return np.packbits(np.asarray(bits, np.uint8)).view(">u8").astype(np.uint64)


def from_hex(values: list[str]) -> np.ndarray:
    """(n, 4) uint64 of 64-hex-digit PDQ hashes (ThreatExchange's form)."""
    raw = b"".join(bytes.fromhex(v) for v in values)
    return np.frombuffer(raw, ">u8").astype(np.uint64).reshape(len(values), WORDS)


def to_hex(packed: np.ndarray) -> list[str]:
    """ThreatExchange's 64 hex digits of each row of (n, 4) uint64."""
    raw = np.ascontiguousarray(packed, np.uint64).astype(">u8").tobytes()
    return [raw[i:i + 32].hex() for i in range(0, len(raw), 32)]


def pdq(data: bytes) -> tuple[np.ndarray, int] | None:
    """(4 uint64 words, quality 0..100) of one image's bytes; None when it does not decode."""
    import pdqhash

    rgb = decode_rgb(data)
    if rgb is None:
        return None
    bits, quality = pdqhash.compute(rgb)
    return pack_bits(bits), int(quality)


def pdq_hashes(images: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) uint64 PDQ hashes and a (n,) bool ``known`` mask (False: no bytes, or they
    did not decode)."""
    out = np.zeros((len(images), WORDS), np.uint64)
    known = np.zeros(len(images), bool)
    for i, data in enumerate(images):
        if data:
            h = pdq(data)
            if h is not None:
                out[i], known[i] = h[0], True
    return out, known
