"""decode: gpu (curate.models.gpu_decode) against open_clip's own preprocess.

Without CUDA the same code runs on the CPU, which is what these tests check: batched
torchvision decode, the resample with open_clip's geometry, per-image fallback and errors.
The float32 resample that CUDA takes is checked on the CPU too.
"""

from __future__ import annotations

import io

import open_clip
import pytest
import torch
from helpers import photo
from PIL import Image

from curate.models.fast_preprocess import affine, decode_jpeg_cpu, resample_into
from curate.models.gpu_decode import decode_jpegs, default_device, gpu_batch
from curate.models.images import decode_image

STEP = 1 / (255 * 0.26130258) + 1e-4  # one uint8 step in normalised units (smallest std)
SIZES = [(640, 480), (480, 640), (1024, 683), (333, 1001), (300, 300), (800, 200), (150, 90)]


@pytest.fixture(scope="module")
def pre():
    return open_clip.image_transform(224, is_train=False)


def _jpeg(seed: int, size, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    photo(seed, size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(seed: int, size) -> bytes:
    buf = io.BytesIO()
    photo(seed, size).save(buf, "PNG")
    return buf.getvalue()


def _exact(pre, images) -> torch.Tensor:
    """The reference: open_clip's val transform on Pillow's RGB decode, image by image."""
    return torch.stack([pre(Image.open(io.BytesIO(d)).convert("RGB")) for d in images])


def test_default_device_is_cuda_only_when_there_is_one():
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_pixels_match_open_clip(pre):
    """Landscape, portrait, square, extreme and upscaled JPEGs: within 2 uint8 steps of
    open_clip's tensors (measured: max 2 steps, mean ~1e-5 in normalised units)."""
    images = [_jpeg(i, s) for i, s in enumerate(SIZES)]
    got, ok, errors = gpu_batch(images, pre, device="cpu")
    want = _exact(pre, images)
    assert ok.tolist() == list(range(len(SIZES))) and errors == [None] * len(SIZES)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    diff = (got - want).abs()
    assert float(diff.max()) <= 2 * STEP and float(diff.mean()) < 1e-4


def test_float_resample_that_cuda_takes_matches_too(pre):
    """CUDA has no uint8 antialiased bicubic: float32, rounded and clamped. On the CPU it
    stays within 2 uint8 steps of open_clip (measured the same as the uint8 kernel)."""
    scale, shift = affine(pre)
    for i, (w, h) in enumerate(SIZES):
        data = _jpeg(20 + i, (w, h))
        x = decode_jpeg_cpu(data)[None].float()
        out = torch.empty((3, 224, 224))
        resample_into(out, x, w, h, 224, scale, shift)
        assert float((out - _exact(pre, [data])[0]).abs().max()) <= 2 * STEP, (w, h)


def test_embeddings_match_open_clip(pre):
    """Random-init ViT-B-32: cosine to the exact embeddings >= 0.999 (measured 1.00000)."""
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    images = [_jpeg(40 + i, s, quality=85) for i, s in enumerate(SIZES)]
    got, _, _ = gpu_batch(images, pre, device="cpu")
    with torch.inference_mode():
        a, b = model.encode_image(got), model.encode_image(_exact(pre, images))
    assert float(torch.nn.functional.cosine_similarity(a, b).min()) >= 0.999


def test_png_and_corrupt_jpeg_fall_back_per_image(pre):
    """A PNG takes the exact path (the same tensor as exact); a corrupt JPEG is one error
    string (exact's), a missing image another, and the batch goes on."""
    from curate.models.images import preprocess_images

    jpg, png = _jpeg(1, (640, 480)), _png(2, (300, 200))
    broken = jpg[: len(jpg) // 2]
    images = [jpg, png, broken, None, b"GIF89a nonsense", jpg]
    got, ok, errors = gpu_batch(images, pre, device="cpu")
    _, ok0, errors0 = preprocess_images(images, pre)
    assert ok.tolist() == ok0.tolist() == [0, 1, 5]
    assert errors == errors0
    assert torch.equal(got[1], pre(decode_image(png)))
    assert torch.equal(got[0], got[2])


def test_a_refused_jpeg_costs_only_itself():
    """The batched decode fails as a whole; the retry image by image keeps the others."""
    jpg = _jpeg(3, (320, 240))
    out = decode_jpegs([jpg, b"\xff\xd8\xff" + b"\x00" * 64, jpg], torch.device("cpu"))
    assert out[1] is None and tuple(out[0].shape) == tuple(out[2].shape) == (3, 240, 320)
    assert decode_jpegs([], torch.device("cpu")) == []


def test_max_pixels_refused_before_decoding(pre):
    big, small = _jpeg(4, (1200, 900)), _jpeg(5, (400, 300))
    got, ok, errors = gpu_batch([big, small], pre, max_pixels=500_000, device="cpu")
    assert ok.tolist() == [1] and tuple(got.shape) == (1, 3, 224, 224)
    assert errors[0].startswith("image decode failed: image too large (1200x900")


def test_nothing_decodable_gives_an_empty_batch(pre):
    got, ok, errors = gpu_batch([None, b"x"], pre, device="cpu")
    assert tuple(got.shape) == (0, 3, 224, 224) and ok.tolist() == []
    assert all(e is not None for e in errors)


def test_non_square_input_takes_the_exact_path():
    pre = open_clip.image_transform((224, 160), is_train=False, resize_mode="squash")
    images = [_jpeg(6, (640, 480))]
    got, ok, _ = gpu_batch(images, pre, device="cpu")
    assert torch.equal(got, _exact(pre, images)) and ok.tolist() == [0]


def test_batch_size_auto_and_assembly_on_cpu():
    from types import SimpleNamespace

    from curate.stages.score_encode import (
        DEFAULT_BATCH,
        assemble,
        choose_batch_size,
        resolve_batch_size,
    )

    cpu = SimpleNamespace(device=torch.device("cpu"), image_size=(224, 224))
    assert resolve_batch_size("auto", cpu) == DEFAULT_BATCH
    assert resolve_batch_size(48, cpu) == 48
    # 80 GB free, 20 MB per image: half of it holds 2,000 -> 1,024 (the cap)
    assert choose_batch_size(80 << 30, 20 << 20) == 1024
    assert choose_batch_size(4 << 30, 20 << 20) == 64  # 102 fit: the power of two below
    assert choose_batch_size(1 << 20, 20 << 20) == 1
    parts = [torch.ones(2, 3, 4, 4), torch.zeros(1, 3, 4, 4)]
    batch = assemble(parts, torch.device("cpu"))
    assert tuple(batch.shape) == (3, 3, 4, 4) and not batch.is_pinned()
    assert assemble(parts[:1], torch.device("cpu")) is parts[0]
