"""``score.decode: gpu``: a batch of JPEGs decoded by nvJPEG, resized, cropped and normalised
on the model's GPU, so that the CPU only reads headers.

On a GPU host the CPU decode is what bounds the score stage (~800 img/s per core even with
``decode: fast``, against several thousand img/s for ViT-B-32 in fp16). Here a whole batch is
handed to ``torchvision.io.decode_jpeg(list, device="cuda")`` (batched nvJPEG), then each image
is resized with the same antialiased bicubic filter as ``decode: fast`` (float32 on the GPU,
rounded and clamped to 0..255 as Pillow stores pixels), centre-cropped with open_clip's
geometry and normalised into one batch tensor that stays on the device: the model takes it
without another copy.

What cannot go that way takes open_clip's exact path on the CPU, one image at a time, and the
result is copied into the batch: formats other than JPEG, CMYK JPEGs, and what the decoder
refuses (a batch that fails is retried image by image, so one bad JPEG costs only itself). The
``max_pixels`` limit is checked on the header before anything is decoded. Without CUDA the same
code runs on the CPU (libjpeg-turbo, torch's uint8 resample): what tests exercise here.

nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's, so on CUDA pixels differ from
exact by a little more than ``decode: fast``'s 1 or 2 of 255; bench/gpu_check.py measures it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from curate.models.fast_preprocess import (
    JPEG_MODES,
    affine,
    decode_jpeg_or_none,
    jpeg_tensor,
    resample_into,
)
from curate.models.images import ImageDecodeError, input_size, load_rgb, open_image, row_error

if TYPE_CHECKING:
    import torch


def default_device() -> torch.device:
    """Where ``decode: gpu`` decodes: the first CUDA device, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_batch(images: list[bytes | None], preprocess, max_pixels: int | None = None,
              device: torch.device | str | None = None):
    """:func:`curate.models.images.preprocess_images` with ``decode: gpu``: (tensor of the
    images that worked, on ``device``, their indices, one error or None per input)."""
    import torch

    device = torch.device(device) if device is not None else default_device()
    h, w = input_size(preprocess) or (224, 224)
    if h != w:  # a non-square input ('squash' resize) is not what this path computes
        from curate.models.images import preprocess_images

        t, idx, errors = preprocess_images(images, preprocess, max_pixels=max_pixels)
        return t.to(device), idx, errors
    scale, shift = affine(preprocess, device)
    out = torch.empty((len(images), 3, h, w), dtype=torch.float32, device=device)
    errors: list[str | None] = [None] * len(images)
    jpegs, cpu = [], []
    opened = {}  # index -> its header-checked image (the exact fallback decodes from it)
    for i, data in enumerate(images):
        try:
            img = opened[i] = open_image(data, max_pixels=max_pixels)  # the limit first
        except ImageDecodeError as exc:
            errors[i] = str(exc)
            continue
        if img.format == "JPEG" and img.mode in JPEG_MODES:
            jpegs.append(i)
        else:
            cpu.append(i)
    decoded = decode_jpegs([images[i] for i in jpegs], device)
    for i, x in zip(jpegs, decoded, strict=True):
        if x is None:
            cpu.append(i)
            continue
        try:
            resample_into(out[i], x[None], *opened[i].size, h, scale, shift)
        except Exception:  # noqa: BLE001 - odd decoder output: the exact path says what
            cpu.append(i)
    for i in cpu:
        errors[i] = _exact_into(out[i], opened[i], preprocess)
    idx = np.asarray([i for i, e in enumerate(errors) if e is None], np.int64)
    if len(idx) == len(images):
        return out, idx, errors
    return out[torch.from_numpy(idx).to(device)], idx, errors


def decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 (3, h, w) per JPEG on ``device``, None for one the decoder refuses: the batch in
    one call, and image by image only when that call fails (it fails as a whole)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    raw = [jpeg_tensor(d) for d in datas]
    try:
        return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        return [decode_jpeg_or_none(r, device) for r in raw]


def _exact_into(out: torch.Tensor, img, preprocess) -> str | None:
    """open_clip's preprocess on the CPU into ``out`` (on any device), from the image
    :func:`gpu_batch` already opened (header read, pixel limit checked); the error or None."""
    try:
        out.copy_(preprocess(load_rgb(img)))
    except Exception as exc:  # noqa: BLE001 - one odd image must not end the batch
        return row_error(exc)
    return None
