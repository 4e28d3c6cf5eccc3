"""decode: fast against open_clip's own val transform on images drawn here."""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
import torch
from helpers import encode_image, photo
from PIL import Image

from curate.models.fast_preprocess import affine, decode_pixels, fast_into, resize_crop
from curate.models.images import decode_image

# one uint8 step in normalised units is 1 / (255 * std) <= 0.0150 (open_clip's smallest std);
# the resample rounds a little differently from Pillow: measured at most 2 steps (upscales;
# 1 for downscales), mean |diff| ~1e-5, over 9 sizes x 4 drawings x PNG/JPEG
ONE_STEP = 1 / (255 * 0.26130258) + 1e-4
TWO_STEPS = 2 * ONE_STEP


@pytest.fixture(scope="module")
def pre():
    return open_clip.image_transform(224, is_train=False)


def _fast(pre, data: bytes) -> np.ndarray:
    scale, shift = affine(pre)
    out = torch.empty((3, 224, 224))
    fast_into(out, data, 224, scale, shift)
    return out.numpy()


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (1001, 333), (150, 90)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_full_size_decode_equals_open_clip(pre, size, fmt):
    """Without reduced-scale decoding (a PNG through Pillow, a JPEG through torchvision) the
    resample is open_clip's Resize + CenterCrop: the same pixels give or take a uint8 step
    or two (see TWO_STEPS)."""
    data = encode_image(photo(11, size), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    out = _fast(pre, data)
    want = pre(decode_image(data)).numpy()
    assert np.abs(out - want).max() <= (ONE_STEP if min(size) >= 224 else TWO_STEPS)
    assert np.abs(out - want).mean() < 2e-4


def test_grayscale_and_cmyk_jpegs_match(pre):
    img = photo(15, (500, 400))
    for mode in ("L", "CMYK"):
        data = encode_image(img.convert(mode), "JPEG", quality=90)
        assert np.abs(_fast(pre, data) - pre(decode_image(data)).numpy()).max() <= ONE_STEP


def test_large_jpeg_decodes_at_reduced_scale_with_a_margin(pre):
    """1280x960: short side >= 2 * 2 * 224, so libjpeg decodes at 1/2 (640x480: still twice
    the input) and the embedding-relevant pixels stay close."""
    data = encode_image(photo(12, (1280, 960)), "JPEG", quality=90)
    x, w, h = decode_pixels(data, 224)
    assert (w, h) == (1280, 960) and tuple(x.shape[-2:]) == (480, 640)
    want = pre(decode_image(data)).numpy()
    assert np.abs(_fast(pre, data) - want).mean() < 0.02
    # below the margin: a full decode
    x, _, _ = decode_pixels(encode_image(photo(12, (1000, 800)), "JPEG"), 224)
    assert tuple(x.shape[-2:]) == (800, 1000)


def test_resize_crop_is_torchvisions_geometry():
    # 640x480 -> 298x224 (torchvision floors the long side), crop offset round(37.0) = 37
    assert resize_crop(640, 480, 224) == (298, 224, 37, 0)
    assert resize_crop(480, 640, 224) == (224, 298, 0, 37)
    assert resize_crop(300, 300, 224) == (224, 224, 0, 0)


def test_fast_batch_keeps_preprocess_images_contract(pre):
    """Same return shape as preprocess_images: tensor of the good images, their indices,
    one error string per bad input (the same string as exact's)."""
    from curate.models.fast_preprocess import fast_batch
    from curate.models.images import preprocess_images

    jpg = encode_image(photo(13, (640, 480)), "JPEG", quality=90)
    png = encode_image(photo(14, (300, 200)), "PNG")
    images = [jpg, None, b"not an image", png, jpg[: len(jpg) // 2]]
    t, ok, errors = fast_batch(images, pre)
    t0, ok0, errors0 = preprocess_images(images, pre)
    assert ok.tolist() == ok0.tolist() == [0, 3] and tuple(t.shape) == (2, 3, 224, 224)
    assert errors == errors0
    assert float((t - t0).abs().max()) <= TWO_STEPS


def test_max_pixels_is_checked_before_decoding(pre):
    from curate.models.fast_preprocess import fast_batch

    jpg = encode_image(photo(16, (640, 480)), "JPEG")
    _, ok, errors = fast_batch([jpg, jpg], pre, max_pixels=640 * 480 - 1)
    assert ok.tolist() == [] and all("image too large (640x480" in e for e in errors)


def test_image_sizes_read_by_header_only():
    assert Image.open(io.BytesIO(encode_image(photo(1, (64, 48)), "JPEG"))).size == (64, 48)
