"""curate.models.clip against a direct open_clip computation, on a tiny random model.

No weights can be downloaded here, so every model is a ~3M-parameter custom config with random
weights that the tests save and reload themselves.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import encode_image
from PIL import Image, ImageDraw

from curate.errors import InputError
from curate.models.clip import load_model
from curate.models.encode import encode, encode_images, encode_texts
from curate.models.images import ImageDecodeError, decode_image, preprocess_images
from curate.models.spec import ModelSpec

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

TINY = "curate-test-tiny"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CAPTIONS = ["a red square on white", "a photo of a dog", "", "blue stripes"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Two intra-op threads on a shared 2-core machine make these tiny models 3-5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def is_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CFG))
    return path


@pytest.fixture(scope="module")
def reference(tiny_config):
    """A seeded random tiny model in memory, and its state dict saved three ways."""
    open_clip.add_model_config(tiny_config)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None).eval()
    state = model.state_dict()
    folder = tiny_config.parent
    torch.save(state, folder / "plain.pt")
    torch.save(
        {"epoch": 3, "name": "x", "state_dict": {"module." + k: v for k, v in state.items()}},
        folder / "train.pt",
    )
    return model, folder


def _spec(tiny_config, pretrained="none", **kw) -> ModelSpec:
    return ModelSpec(model_config=str(tiny_config), pretrained=pretrained, device="cpu", **kw)


def _draw(size=(640, 480), seed=0, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        box = (x0, y0, x0 + int(rng.integers(10, 300)), y0 + int(rng.integers(10, 300)))
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    if mode == "P":
        return img.quantize(64)
    return img.convert(mode)


def _direct(model, preprocess, pil_images, captions):
    """What a user would write with open_clip alone."""
    with torch.no_grad():
        x = torch.stack([preprocess(im) for im in pil_images])
        im = model.encode_image(x)
        tx = model.encode_text(open_clip.get_tokenizer(TINY)(captions))
    im = (im / im.norm(dim=-1, keepdim=True)).numpy()
    tx = (tx / tx.norm(dim=-1, keepdim=True)).numpy()
    return im, tx, (im * tx).sum(1)


# --------------------------------------------------------------------------- scores


def test_encode_matches_direct_open_clip(tiny_config):
    loaded = load_model(_spec(tiny_config))
    assert loaded.random_init and loaded.embed_dim == 32 and loaded.context_length == 77
    assert loaded.image_size == (64, 64) and loaded.precision == "fp32"
    assert not loaded.model.training
    blobs = [encode_image(_draw(seed=s), "JPEG", quality=90) for s in range(4)]
    tensor, ok, errors = preprocess_images(blobs, loaded.preprocess)
    assert tensor.shape == (4, 3, 64, 64) and ok.tolist() == [0, 1, 2, 3]
    assert errors == [None] * 4
    img_emb, txt_emb, score = encode(loaded, tensor, CAPTIONS)
    assert img_emb.dtype == txt_emb.dtype == score.dtype == np.float32
    assert img_emb.shape == txt_emb.shape == (4, 32) and score.shape == (4,)

    # Reference: open_clip's own val transform (built independently) on PIL's own decode.
    ref_pre = open_clip.image_transform(64, is_train=False)
    pil = [Image.open(io.BytesIO(b)) for b in blobs]
    ref_img, ref_txt, ref_score = _direct(loaded.model, ref_pre, pil, CAPTIONS)
    np.testing.assert_allclose(img_emb, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt_emb, ref_txt, atol=1e-5)
    np.testing.assert_allclose(score, ref_score, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(img_emb, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(score, np.einsum("ij,ij->i", img_emb, txt_emb))
    np.testing.assert_array_equal(encode_images(loaded, tensor), img_emb)
    np.testing.assert_array_equal(encode_texts(loaded, CAPTIONS), txt_emb)


def test_empty_batch_and_mismatch(tiny_config):
    loaded = load_model(_spec(tiny_config))
    tensor, ok, errors = preprocess_images([], loaded.preprocess)
    assert tensor.shape == (0, 3, 64, 64) and ok.shape == (0,) and errors == []
    img_emb, txt_emb, score = encode(loaded, tensor, [])
    assert img_emb.shape == txt_emb.shape == (0, 32) and score.shape == (0,)
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        encode(loaded, torch.zeros(2, 3, 64, 64), ["x"])


def test_captions_none_is_empty_and_non_str_rejected(tiny_config):
    loaded = load_model(_spec(tiny_config))
    np.testing.assert_array_equal(encode_texts(loaded, [None]), encode_texts(loaded, [""]))
    with pytest.raises(TypeError, match="caption 1 is float"):
        encode_texts(loaded, ["ok", float("nan")])


def test_long_captions_truncate_like_open_clip(tiny_config):
    loaded = load_model(_spec(tiny_config))
    long = " ".join(f"word{i}" for i in range(200))  # far more than 77 tokens
    tokens = open_clip.tokenize([long])
    assert tokens.shape == (1, 77) and tokens[0, -1] != 0  # truncated, end token kept
    got = encode_texts(loaded, [long, long + " and some more words"])
    with torch.no_grad():
        ref = loaded.model.encode_text(tokens)
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(got[0], ref[0], atol=1e-5)
    np.testing.assert_array_equal(got[0], got[1])  # words past the context do not matter


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("kind", ["plain.pt", "train.pt", "safetensors"])
def test_local_checkpoints_reload_identically(tiny_config, reference, kind):
    model, folder = reference
    path = folder / kind
    if kind == "safetensors":
        st = pytest.importorskip("safetensors.torch")
        path = folder / "weights.safetensors"
        st.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_model(_spec(tiny_config, str(path)))
    assert not loaded.random_init
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    blobs = [encode_image(_draw(seed=s), "PNG") for s in range(2)]
    tensor, _, _ = preprocess_images(blobs, loaded.preprocess)
    got = encode(loaded, tensor, CAPTIONS[:2])
    ref = _direct(
        model, loaded.preprocess, [Image.open(io.BytesIO(b)) for b in blobs], CAPTIONS[:2]
    )
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_checkpoint_that_does_not_fit(tiny_config, tmp_path):
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"do not fit curate-test-tiny .*score.model"):
        load_model(_spec(tiny_config, str(tmp_path / "other.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="junk.pt' for curate-test-tiny could not be loaded"):
        load_model(_spec(tiny_config, str(tmp_path / "junk.pt")))


def test_missing_path_unknown_tag_unknown_model(tiny_config, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(_spec(tiny_config, str(tmp_path / "nope.pt")))
    with pytest.raises(InputError, match="has no pretrained tags; .laion2b_s34b_b79k. is a tag of"):
        load_model(_spec(tiny_config, "laion2b_s34b_b79k"))
    with pytest.raises(InputError, match=r"not a known tag.*valid tags for ViT-B-32: openai"):
        load_model(ModelSpec(model="ViT-B-32", pretrained="nonsense_tag", device="cpu"))
    with pytest.raises(InputError, match=r"unknown open_clip model 'ViT-B-33'.*ViT-B-32"):
        load_model(ModelSpec(model="ViT-B-33", pretrained="openai"))
    with pytest.raises(InputError, match="score.model: required"):
        load_model(ModelSpec(pretrained="none"))
    with pytest.raises(InputError, match="score.pretrained: required"):
        ModelSpec(model="ViT-B-32", pretrained=" ")


def test_model_config_errors(tiny_config, tmp_path):
    with pytest.raises(InputError, match="set score.model to 'curate-test-tiny'"):
        load_model(_spec(tiny_config, model="ViT-B-32"))
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(ModelSpec(model_config=str(bad), pretrained="none"))
    bad.write_text('{"embed_dim": 8}')
    with pytest.raises(InputError, match="missing vision_cfg, text_cfg"):
        load_model(ModelSpec(model_config=str(bad), pretrained="none"))
    with pytest.raises(InputError, match="does not exist"):
        load_model(ModelSpec(model_config=str(tmp_path / "absent.json"), pretrained="none"))


@pytest.mark.parametrize(
    "pretrained", ["laion2b_s34b_b79k", "openai", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"]
)
def test_named_weights_offline_fail_fast(tmp_path, pretrained, no_network):
    # fails without trying the network (no_network turns any attempt into a failure)
    with pytest.raises(InputError) as info:
        load_model(ModelSpec(model="ViT-B-32", pretrained=pretrained, cache_dir=str(tmp_path)))
    msg = str(info.value)
    assert "\n" not in msg and f"weights '{pretrained}'" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "set score.pretrained to the local file path" in msg
    if not pretrained.startswith("hf-hub:"):
        assert "for ViT-B-32" in msg


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """The layout huggingface_hub's cache uses, so offline lookups find the files."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_tag_loads_offline_from_hub_cache(tiny_config, reference, tmp_path, monkeypatch):
    model, folder = reference
    from open_clip import pretrained as oc_pretrained

    tag_cfg = {
        "hf_hub": "curate-test/tiny/",
        "quick_gelu": True,
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
    }
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY, {"faketag": tag_cfg})
    _fake_hub_cache(tmp_path, "curate-test/tiny", {
        "open_clip_pytorch_model.bin": (folder / "plain.pt").read_bytes(),
    })  # fmt: skip
    loaded = load_model(_spec(tiny_config, "faketag", cache_dir=str(tmp_path)))
    assert not loaded.random_init
    norm = loaded.preprocess.transforms[-1]
    assert tuple(norm.mean) == (0.5,) * 3 and tuple(norm.std) == (0.25,) * 3  # the tag's
    gelu = loaded.model.transformer.resblocks[0].mlp.gelu
    assert type(gelu).__name__ == "QuickGELU"  # the tag was trained with it
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    # Cached weights are used without asking the hub, online too (no network attempt).
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import socket

    real_connect, real_gai = socket.socket.connect, socket.getaddrinfo

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked although the weights are cached")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    again = load_model(_spec(tiny_config, "faketag", cache_dir=str(tmp_path)))
    assert torch.equal(again.model.visual.proj, model.visual.proj)
    monkeypatch.setattr(socket.socket, "connect", real_connect)
    monkeypatch.setattr(socket, "getaddrinfo", real_gai)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The same tag with an empty cache: the offline message names the hub file.
    with pytest.raises(InputError, match="curate-test/tiny/open_clip_pytorch_model.bin"):
        load_model(_spec(tiny_config, "faketag", cache_dir=str(tmp_path / "empty")))


def test_hf_hub_id_and_folder_load_offline(reference, tmp_path):
    model, folder = reference
    config = json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}).encode()
    weights = (folder / "plain.pt").read_bytes()
    _fake_hub_cache(tmp_path / "hub", "org/tiny", {
        "open_clip_config.json": config, "open_clip_pytorch_model.bin": weights,
    })  # fmt: skip
    loaded = load_model(ModelSpec(pretrained="hf-hub:org/tiny", cache_dir=str(tmp_path / "hub")))
    assert loaded.embed_dim == 32 and loaded.name == "hf-hub:org/tiny"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    local = tmp_path / "local"
    local.mkdir()
    (local / "open_clip_config.json").write_bytes(config)
    with pytest.raises(InputError, match="has no weights"):
        load_model(ModelSpec(pretrained=str(local)))
    (local / "open_clip_pytorch_model.bin").write_bytes(weights)
    loaded = load_model(ModelSpec(pretrained=str(local)))
    assert torch.equal(loaded.model.visual.proj, model.visual.proj)


def test_cuda_requested_without_gpu(tiny_config):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(InputError, match="score.device: 'cuda'"):
        load_model(ModelSpec(model_config=str(tiny_config), pretrained="none", device="cuda"))


def test_autocast_precisions(tiny_config):
    """bf16 autocast on CPU (fp16 on CUDA when there is one) stays close to fp32."""
    torch.manual_seed(0)
    ref = load_model(_spec(tiny_config))
    blobs = [encode_image(_draw(seed=s), "JPEG") for s in range(3)]
    tensor, _, _ = preprocess_images(blobs, ref.preprocess)
    expected = encode(ref, tensor, CAPTIONS[:3])
    variants = [("cpu", "bf16", 0.05)]
    if torch.cuda.is_available():
        variants += [("cuda", "auto", 0.01), ("cuda", "fp32", 1e-4)]
    for device, precision, tol in variants:
        spec = ModelSpec(
            model_config=str(tiny_config), pretrained="none", device=device, precision=precision
        )
        loaded = load_model(spec)
        loaded.model.load_state_dict(ref.model.state_dict())
        got = encode(loaded, tensor, CAPTIONS[:3])
        for a, b in zip(got, expected, strict=True):
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, b, atol=tol)


def test_import_does_not_load_torch():
    code = "import sys, curate.models.clip; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


# --------------------------------------------------------------------------- images


def test_bad_images_become_error_strings(tiny_config):
    loaded = load_model(_spec(tiny_config))
    good = encode_image(_draw(), "JPEG")
    rng = np.random.default_rng(1)
    corrupt = good[:200] + rng.integers(0, 256, len(good) - 200, dtype=np.uint8).tobytes()
    batch = [good, None, b"", b"hello, not an image", good[: len(good) // 3], corrupt, good]
    tensor, ok, errors = preprocess_images(batch, loaded.preprocess)
    assert ok.tolist() == [0, 6] and tensor.shape == (2, 3, 64, 64)
    assert errors[0] is None and errors[6] is None
    assert errors[1] == errors[2] == "image decode failed: no image bytes"
    assert errors[3] == "image decode failed: not a recognised image format"
    assert errors[4].startswith("image decode failed: ") and "truncated" in errors[4]
    assert errors[5].startswith("image decode failed: ")
    assert all("\n" not in e for e in errors if e)


def test_decompression_bomb_guard(tiny_config, monkeypatch):
    loaded = load_model(_spec(tiny_config))
    blob = encode_image(_draw((640, 480)), "PNG")
    _, ok, errors = preprocess_images([blob], loaded.preprocess, max_pixels=1000)
    assert ok.size == 0 and "image too large (640x480 = 307200 pixels > 1000)" in errors[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    _, ok, errors = preprocess_images([blob], loaded.preprocess)
    assert ok.size == 0 and "too large" in errors[0]


@pytest.mark.parametrize(
    ("fmt", "mode", "kw"),
    [
        ("PNG", "RGB", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("PNG", "RGBA", {}),
        ("PNG", "L", {}),
        ("PNG", "P", {}),
        ("GIF", "P", {}),
        ("JPEG", "L", {}),
        ("WEBP", "RGBA", {"quality": 80}),
        ("BMP", "RGB", {}),
    ],
)
def test_formats_and_modes(tiny_config, fmt, mode, kw):
    loaded = load_model(_spec(tiny_config))
    img = _draw((200, 150), seed=3, mode=mode)
    blob = encode_image(img, fmt, **kw)
    tensor, ok, errors = preprocess_images([blob], loaded.preprocess)
    assert errors == [None] and ok.tolist() == [0]
    # Converted to RGB right after decoding, as open_clip's training loader does.
    ref = open_clip.image_transform(64, is_train=False)(Image.open(io.BytesIO(blob)).convert("RGB"))
    torch.testing.assert_close(tensor[0], ref, atol=1e-6, rtol=0)
    if mode in ("RGB", "L"):  # for these, identical to open_clip's preprocess on the raw image
        raw = open_clip.image_transform(64, is_train=False)(Image.open(io.BytesIO(blob)))
        torch.testing.assert_close(tensor[0], raw, atol=1e-6, rtol=0)


def test_untrusted_formats_are_refused():
    buf = io.BytesIO()
    _draw((32, 32)).save(buf, format="PPM")
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        decode_image(buf.getvalue())
    assert decode_image(buf.getvalue(), formats=None).size == (32, 32)


def test_fast_decode_drafts_but_never_below_the_input_size(tiny_config):
    loaded = load_model(_spec(tiny_config))
    blob = encode_image(_draw((1024, 768)), "JPEG", quality=90)
    drafted = decode_image(blob, draft_size=(64, 64))
    assert drafted.size == (128, 96)  # 1/8 scale, still >= 64 on both sides
    assert decode_image(blob, draft_size=(300, 300)).size == (512, 384)  # 1/2: 1/4 would be < 300
    full, _, _ = preprocess_images([blob], loaded.preprocess)
    fast, _, _ = preprocess_images([blob], loaded.preprocess, fast_decode=True)
    plain = open_clip.image_transform(64, is_train=False)(Image.open(io.BytesIO(blob)))
    torch.testing.assert_close(full[0], plain, atol=1e-6, rtol=0)  # default: exact
    diff = (fast - full).abs()
    assert 0 < diff.max() < 0.5 and diff.mean() < 0.05  # close, not identical


def test_decode_on_threads_matches_sequential(tiny_config):
    """The score stage decodes on a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    loaded = load_model(_spec(tiny_config))
    blobs = [encode_image(_draw((160, 120), seed=s, mode="P"), "PNG") for s in range(16)]
    blobs[5] = b"garbage"
    seq, ok, errors = preprocess_images(blobs, loaded.preprocess)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda i: preprocess_images(blobs[i : i + 4], loaded.preprocess),
                              range(0, 16, 4)))  # fmt: skip
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), seq, atol=0, rtol=0)
    assert sum((p[2] for p in parts), []) == errors and ok.size == 15
