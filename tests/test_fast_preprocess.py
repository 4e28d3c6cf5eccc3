"""decode: fast against open_clip's own val transform on images drawn here."""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
from PIL import Image
from test_image_dedup import _photo

from curate.models.fast_preprocess import crop_box, fast_into, normalisation
from curate.models.images import decode_image


@pytest.fixture(scope="module")
def pre():
    return open_clip.image_transform(224, is_train=False)


def _bytes(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (1001, 333)])
def test_geometry_equals_resize_then_centre_crop(pre, size):
    """Without reduced-scale decoding (a PNG) the one-step box resample is open_clip's
    Resize + CenterCrop: the tensors agree to rounding."""
    img = _photo(11, size)
    data = _bytes(img, "PNG")
    mean, std = normalisation(pre)
    out = np.empty((3, 224, 224), np.float32)
    fast_into(out, data, 224, mean, std)
    want = pre(decode_image(data)).numpy()
    assert np.abs(out - want).mean() < 2e-3 and np.abs(out - want).max() < 0.1


def test_jpeg_at_reduced_scale_stays_close(pre):
    img = _photo(12, (1280, 960))
    data = _bytes(img, "JPEG", quality=90)
    mean, std = normalisation(pre)
    out = np.empty((3, 224, 224), np.float32)
    fast_into(out, data, 224, mean, std)
    want = pre(decode_image(data)).numpy()
    assert np.abs(out - want).mean() < 0.05
    assert Image.open(io.BytesIO(data)).size == (1280, 960)


def test_crop_box_is_the_kept_region():
    # 640x480 -> 298x224 (torchvision floors the long side), crop offset round(37.0) = 37
    left, top, right, bottom = crop_box(640, 480, 224)
    assert top == 0 and bottom == 480
    assert left == pytest.approx(37 * 640 / 298) and right == pytest.approx(261 * 640 / 298)
    # the same region in a half-scale decode
    assert crop_box(640, 480, 224, 320, 240)[0] == pytest.approx(37 * 320 / 298)


def test_fast_batch_keeps_preprocess_images_contract(pre):
    """Same return shape as preprocess_images: tensor of the good images, their indices,
    one error string per bad input."""
    from curate.models.fast_preprocess import fast_batch
    from curate.models.images import preprocess_images

    jpg = _bytes(_photo(13, (640, 480)), "JPEG", quality=90)
    png = _bytes(_photo(14, (300, 200)), "PNG")
    images = [jpg, None, b"not an image", png]
    t, ok, errors = fast_batch(images, pre)
    t0, ok0, errors0 = preprocess_images(images, pre)
    assert ok.tolist() == ok0.tolist() == [0, 3] and tuple(t.shape) == (2, 3, 224, 224)
    assert [e is None for e in errors] == [e is None for e in errors0]
    assert float((t - t0).abs().mean()) < 0.05
