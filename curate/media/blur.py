"""Face blurring as DataComp did it: img2dataset's ``BoundingBoxBlurrer``, pixel for pixel.

:func:`blur_boxes` is the same computation as ``img2dataset.blurrer.BoundingBoxBlurrer``
(DataComp's face blurring, after princetonvisualai/imagenet-face-obfuscation), written
against OpenCV directly instead of through albumentations:

- each box ``[x1, y1, x2, y2]`` (floats in [0, 1] of the image as decoded) becomes pixels
  with ``int(x * width)`` / ``int(y * height)``;
- its "diagonal" is its longer side ``d``; the box grows by ``int(... -/+ 0.1 * d)`` on every
  side, then each corner is clipped to ``[0, width - 1]`` / ``[0, height - 1]``;
- the mask is ones over ``[y1:y2, x1:x2]`` (end exclusive) in every channel, zeros elsewhere;
- ``sigma = 0.1 * max(d)`` over all boxes only fixes the kernel size,
  ``k = max(3, 2 * ceil(sigma) + 1)`` (odd); the Gaussian itself is albumentations'
  ``GaussianBlur(blur_limit=(k, k))`` with its default ``sigma_limit=0``, i.e.
  ``cv2.GaussianBlur(x, (k, k), sigmaX=0)``: OpenCV derives the standard deviation from the
  kernel size (``0.3 * ((k - 1) * 0.5 - 1) + 0.8``) and pads with ``BORDER_REFLECT_101``;
- the same Gaussian blurs the image and the mask (float32 in [0, 1]); the result is
  ``img * (1 - mask) + blurred * mask``, times 255, truncated to uint8 (``astype``).

The arithmetic is float32 in the same order, so the pixels equal img2dataset's
(``tests/test_face_blur.py`` calls ``BoundingBoxBlurrer`` itself on the same arrays).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: PIL save options per format: the re-encoded image keeps its format
SAVE = {"JPEG": {"quality": 95}, "PNG": {}, "WEBP": {"quality": 95}}
#: format column values (download's ``format``) -> PIL format names
_PIL_NAMES = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def has_boxes(boxes: Any) -> bool:
    """True when ``boxes`` holds at least one box (None and [] hold none)."""
    return boxes is not None and len(boxes) > 0


def kernel_size(max_diagonal: float) -> int:
    """img2dataset's Gaussian kernel size for the longest box side (``0.1 * d`` as sigma)."""
    k = max(3, int(2 * math.ceil(0.1 * max_diagonal) + 1))
    return k + 1 if k % 2 == 0 else k


def blur_boxes(rgb: np.ndarray, boxes: Sequence[Sequence[float]] | None) -> np.ndarray:
    """``rgb`` (H x W x C uint8) with every normalised box blurred; the same array when
    there are no boxes (as img2dataset returns its input)."""
    import cv2

    if not has_boxes(boxes):
        return rgb
    height, width = rgb.shape[:2]
    img = rgb.astype(np.float32) / 255.0
    mask = np.zeros_like(img)
    max_diagonal = 0
    for box in boxes:
        b = [int(box[0] * width), int(box[1] * height), int(box[2] * width),
             int(box[3] * height)]
        d = max(b[2] - b[0], b[3] - b[1])
        max_diagonal = max(max_diagonal, d)
        b = [int(b[0] - 0.1 * d), int(b[1] - 0.1 * d), int(b[2] + 0.1 * d),
             int(b[3] + 0.1 * d)]
        x1, x2 = (int(np.clip(v, 0, width - 1)) for v in (b[0], b[2]))
        y1, y2 = (int(np.clip(v, 0, height - 1)) for v in (b[1], b[3]))
        mask[y1:y2, x1:x2, ...] = 1
    k = kernel_size(max_diagonal)
    blurred_img = cv2.GaussianBlur(img, (k, k), sigmaX=0)
    blurred_mask = cv2.GaussianBlur(mask, (k, k), sigmaX=0)
    result = img * (1 - blurred_mask) + blurred_img * blurred_mask
    return (result * 255.0).astype(np.uint8)


def pil_format(fmt: str | None) -> str | None:
    """A format column value (``jpg``, ``png``, ``webp``) as PIL names it, or None."""
    if not fmt:
        return None
    return _PIL_NAMES.get(fmt.lower(), fmt.upper())


def blur_image_bytes(data: bytes, boxes: Sequence[Sequence[float]] | None,
                     fmt: str | None = None) -> bytes:
    """Encoded image bytes with the faces in ``boxes`` blurred (:func:`blur_boxes`).

    Decoded with PIL as stored, without applying EXIF orientation (the boxes are normalised
    to the image as decoded, DataComp's convention), converted to RGB, blurred, and
    re-encoded in the same format: JPEG at quality 95, PNG, WebP at quality 95 (``fmt``: the
    format column's value; None: the format PIL read). Another format, or one PIL cannot
    write, is written as JPEG at quality 95. No boxes: the same bytes, untouched.
    """
    if not has_boxes(boxes):
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        name = pil_format(fmt) or img.format or "JPEG"
        rgb = np.asarray(img.convert("RGB"))
    out = Image.fromarray(blur_boxes(rgb, boxes))
    if name not in SAVE:
        name = "JPEG"
    buf = io.BytesIO()
    out.save(buf, name, **SAVE[name])
    return buf.getvalue()
