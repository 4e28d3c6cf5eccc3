"""``score.decode: fast``: libjpeg-turbo decode, then one antialiased resample into the batch.

open_clip's val transform (Resize shortest side, CenterCrop, ToTensor, Normalize) costs ~3 ms
per 640x480 photo on one core here, and most of it is not the decode (~0.85 ms) but Pillow's
bicubic resize of the whole image (~1.5-2 ms) and the copies around it: it caps a GPU host's
score stage. Here, per image:

1. the header is read first (``open_image``: format, size, the ``max_pixels`` limit);
2. a JPEG is decoded by ``torchvision.io.decode_jpeg`` (libjpeg-turbo, straight into a
   uint8 CHW tensor: no Pillow RGBX unpacking and repacking; it releases the GIL, so the
   score stage's decode threads scale). Only a JPEG whose short side is at least
   ``2 * DRAFT_MARGIN * size`` is decoded at reduced scale (DCT scaling, Pillow ``draft``):
   the decoded image then keeps a short side >= ``DRAFT_MARGIN * size``. Decoding closer to
   the target costs accuracy: libjpeg's scaled IDCT is not a bicubic filter, and with 640x480
   photos decoded at 1/2 (short side 240 for 224) the embeddings moved to cosine 0.9983;
   with a 2x margin >= 0.9998 (bench/bench_preprocess.py, 19 real photos upscaled 2-3x);
3. one ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` on the uint8
   pixels resizes the short side to ``size`` as torchvision's Resize does on a PIL image
   (torch's SIMD port of Pillow's antialiased bicubic: ~0.3 ms instead of ~1.5-2 ms; uint8
   in and out, rounded and clamped as Pillow does), the centre crop is a view with
   open_clip's offsets (``resize_crop``), and the normalisation writes the float pixels
   straight into the caller's batch tensor.

Full-size decodes give open_clip's pixels to within 1 of 255 (2 for upscales; rounding in the
resample, mean |diff| ~1e-5 in normalised units): cosine 1.00000 to exact on the 19 real
photos. Other formats (PNG, WebP, ...), CMYK JPEGs and what torchvision refuses are decoded by
Pillow (``load_rgb``, as exact does) and then resampled the same way.
bench/bench_preprocess.py measures speed-up and minimum cosine. torchvision 0.29 deprecates
its image decoders for TorchCodec (hence the pinned torchvision): the decode call is
``decode_jpeg_cpu`` here and ``decode_jpegs`` in :mod:`curate.models.gpu_decode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from curate.models.images import load_rgb, open_image

if TYPE_CHECKING:
    import torch

DRAFT_MARGIN = 2
"""A reduced-scale (DCT) decode must keep the short side >= DRAFT_MARGIN * the model input."""

JPEG_MODES = ("RGB", "L")
"""JPEG colour modes torchvision decodes to the same RGB as Pillow; CMYK/YCCK go to Pillow."""


def resize_crop(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of open_clip's Resize(size) +
    CenterCrop(size) on a (w, h) image, as torchvision computes them: the short side to
    ``size``, the long side ``int(size * long / short)``, crop offsets rounded."""
    if w <= h:
        rw, rh = size, int(size * h / w)
    else:
        rw, rh = int(size * w / h), size
    return rw, rh, int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))


def affine(preprocess, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (3, 1, 1) float32: ``uint8 * scale + shift`` is open_clip's
    ToTensor + Normalize (``(x / 255 - mean) / std``) in one multiply-add."""
    import torch

    mean, std = normalisation(preprocess)
    scale = torch.from_numpy(1.0 / (255.0 * std)).view(3, 1, 1)
    shift = torch.from_numpy(-mean / std).view(3, 1, 1)
    return scale.to(device or "cpu"), shift.to(device or "cpu")


def normalisation(preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of open_clip's Normalize in a val transform."""
    for t in getattr(preprocess, "transforms", ()):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return np.asarray(t.mean, np.float32), np.asarray(t.std, np.float32)
    raise ValueError("the transform has no Normalize step")


def resample_into(out: torch.Tensor, x: torch.Tensor, w: int, h: int, size: int,
                  scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Resize + centre-crop + normalise decoded pixels ``x`` (1, C >= 3, dh, dw) of a (w, h)
    image into ``out`` (3, size, size), on x's device. (dh, dw) is (h, w) or a reduced-scale
    decode of it: the geometry is always the full image's, as open_clip computes it.

    uint8 on CPU uses torch's uint8 kernel (Pillow's arithmetic); elsewhere (CUDA has no
    uint8 antialiased bicubic) the same filter runs in float32, rounded and clamped to
    0..255 as Pillow stores its result."""
    import torch
    from torch.nn.functional import interpolate

    rw, rh, left, top = resize_crop(w, h, size)
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        y = interpolate(x, size=(rh, rw), mode="bicubic", antialias=True)
    else:
        y = interpolate(x.float(), size=(rh, rw), mode="bicubic", antialias=True)
        y = y.round_().clamp_(0, 255)
    torch.mul(y[0, :3, top:top + size, left:left + size], scale, out=out)
    out.add_(shift)


def decode_pixels(data: bytes | None, size: int, max_pixels: int | None = None
                  ) -> tuple[torch.Tensor, int, int]:
    """(uint8 pixels (1, C, dh, dw) on CPU, full width, full height) of one image, decoded
    as the module docstring says; raise ImageDecodeError (with exact's message) on failure."""
    img = open_image(data, max_pixels=max_pixels)
    w, h = img.size
    if img.format == "JPEG" and img.mode in JPEG_MODES and min(w, h) < 2 * DRAFT_MARGIN * size:
        x = decode_jpeg_cpu(data)
        if x is not None:
            return x[None], w, h
    draft = (DRAFT_MARGIN * size,) * 2 if img.format == "JPEG" else None
    return pil_pixels(load_rgb(img, draft)), w, h


def decode_jpeg_cpu(data: bytes) -> torch.Tensor | None:
    """torchvision's libjpeg-turbo decode (3, h, w) uint8, or None where it refuses the bytes
    (the caller then lets Pillow decode them, or say why not)."""
    return decode_jpeg_or_none(jpeg_tensor(data))


def jpeg_tensor(data: bytes) -> torch.Tensor:
    """The bytes as the uint8 tensor torchvision's decoders take: a writable copy (torch
    warns about read-only buffers; ~10 us, and decoding copies anyway)."""
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_jpeg_or_none(raw: torch.Tensor, device: torch.device | str = "cpu"
                        ) -> torch.Tensor | None:
    """One JPEG (``jpeg_tensor``) as RGB uint8 (3, h, w) on ``device``, None if refused."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def pil_pixels(img) -> torch.Tensor:
    """An RGB PIL image as uint8 (1, C, h, w): zero-copy (C = 4, Pillow's RGBX layout) through
    the Arrow C interface where Pillow keeps the image in one block, else a copy (C = 3)."""
    import torch

    try:
        import pyarrow as pa

        flat = torch.from_dlpack(pa.array(img).flatten())
        return flat.view(img.height, img.width, 4).permute(2, 0, 1)[None]
    except (ValueError, TypeError, RuntimeError, AttributeError):  # several blocks, old Pillow
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]


def fast_into(out: torch.Tensor, data: bytes | None, size: int, scale: torch.Tensor,
              shift: torch.Tensor, max_pixels: int | None = None) -> None:
    """Decode ``data`` and write its normalised (3, size, size) float32 pixels into ``out``."""
    x, w, h = decode_pixels(data, size, max_pixels)
    resample_into(out, x, w, h, size, scale, shift)


def fast_batch(images: list[bytes | None], preprocess, max_pixels: int | None = None):
    """:func:`curate.models.images.preprocess_images` with ``decode: fast``: the same
    (tensor of the images that worked, their indices, one error or None per input)."""
    import torch

    from curate.models.images import input_size, row_error

    h, w = input_size(preprocess) or (224, 224)
    if h != w:  # a non-square input ('squash' resize) is not what this path computes
        from curate.models.images import preprocess_images

        return preprocess_images(images, preprocess, max_pixels=max_pixels)
    scale, shift = affine(preprocess)
    out = torch.empty((len(images), 3, h, w), dtype=torch.float32)
    ok, errors = [], []
    for i, data in enumerate(images):
        try:
            fast_into(out[i], data, h, scale, shift, max_pixels)
        except Exception as exc:  # noqa: BLE001 - one odd image must not end the batch
            errors.append(row_error(exc))
            continue
        ok.append(i)
        errors.append(None)
    idx = np.asarray(ok, np.int64)
    return (out if len(idx) == len(images) else out[torch.from_numpy(idx)]), idx, errors
