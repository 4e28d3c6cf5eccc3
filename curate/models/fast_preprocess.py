"""``score.decode: fast``: JPEG decoded at reduced scale, then one resample into the batch.

open_clip's val transform (Resize shortest side, CenterCrop, ToTensor, Normalize) decodes
the whole JPEG, resizes it, copies it twice more and normalises in torch: ~200 img/s per core
on 640x480 photos (issue 12's measure), which caps a GPU host's score stage. Here:

1. libjpeg decodes at 1/2, 1/4 or 1/8 scale (DCT scaling, PIL ``draft``), never below the
   model input, so the resample that follows is still a downscale;
2. one ``Image.resize`` with a ``box`` does the shortest-side resize and the centre crop
   together (the box is the crop's footprint in the decoded image), bicubic as open_clip;
3. the uint8 pixels are normalised in NumPy straight into the caller's batch array.

The pixels differ slightly from open_clip's (DCT scaling is not a bicubic filter, and the
crop is resampled at sub-pixel precision instead of rounded to whole pixels): embeddings
move a little; bench/bench_preprocess.py measures the speed-up and the minimum cosine.
Non-JPEG images take the same path without the reduced-scale decode.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from curate.models.images import decode_image


def crop_box(w: int, h: int, size: int, dw: int | None = None, dh: int | None = None
             ) -> tuple[float, float, float, float]:
    """The region of a (dw, dh) decode of a (w, h) image that open_clip's Resize(size) +
    CenterCrop(size) keep, as torchvision computes them on the full image: the short side
    to ``size``, the long side ``int(size * long / short)``, crop offsets rounded."""
    dw, dh = dw or w, dh or h
    if w <= h:
        rw, rh = size, int(size * h / w)
    else:
        rw, rh = int(size * w / h), size
    left, top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
    sx, sy = dw / rw, dh / rh  # resized pixel -> decoded pixel
    return (max(0.0, left * sx), max(0.0, top * sy), min(float(dw), (left + size) * sx),
            min(float(dh), (top + size) * sy))


def fast_into(out: np.ndarray, data: bytes, size: int, mean: np.ndarray, std: np.ndarray,
              max_pixels: int | None = None) -> None:
    """Decode ``data`` and write its normalised (3, size, size) float32 pixels into ``out``."""
    w, h = _header_size(data)
    img = decode_image(data, draft_size=(size, size), max_pixels=max_pixels)
    dw, dh = img.size
    img = img.resize((size, size), Image.Resampling.BICUBIC,
                     box=crop_box(w or dw, h or dh, size, dw, dh))
    px = np.asarray(img, dtype=np.float32)  # (size, size, 3)
    np.subtract(px.transpose(2, 0, 1) * (1 / 255.0), mean[:, None, None], out=out)
    out /= std[:, None, None]


def _header_size(data: bytes) -> tuple[int, int]:
    """The image's full size from its header (0, 0 when unreadable: decode says why)."""
    try:
        return Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 - decode_image raises the real error next
        return 0, 0


def normalisation(preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of open_clip's Normalize in a val transform."""
    for t in getattr(preprocess, "transforms", ()):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return np.asarray(t.mean, np.float32), np.asarray(t.std, np.float32)
    raise ValueError("the transform has no Normalize step")


def fast_batch(images: list[bytes | None], preprocess, max_pixels: int | None = None):
    """:func:`curate.models.images.preprocess_images` with ``decode: fast``: the same
    (tensor of the images that worked, their indices, one error or None per input)."""
    import torch

    from curate.models.images import ImageDecodeError, input_size
    from curate.models.oneline import one_line

    h, w = input_size(preprocess) or (224, 224)
    if h != w:  # a non-square input ('squash' resize) is not what this path computes
        from curate.models.images import preprocess_images

        return preprocess_images(images, preprocess, max_pixels=max_pixels)
    mean, std = normalisation(preprocess)
    out = np.empty((len(images), 3, h, w), np.float32)
    ok, errors = [], []
    for i, data in enumerate(images):
        try:
            fast_into(out[i], data, h, mean, std, max_pixels)
        except ImageDecodeError as exc:
            errors.append(str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 - one odd image must not end the batch
            errors.append("image decode failed: " + one_line(exc, 160))
            continue
        ok.append(i)
        errors.append(None)
    idx = np.asarray(ok, np.int64)
    return torch.from_numpy(out[idx]), idx, errors
