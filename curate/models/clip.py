"""The model side of the score stage: load CLIP weights, decode images, embed, score.

No Ray and no file I/O here beyond reading weights and a model config, so the stage adapter
can run `preprocess_images` in decode workers and `encode` in one model actor per device.

torch and open_clip are imported inside the functions that need them: importing them takes
~7 s on these machines, and other modules (config, CLI) import this one for `ModelSpec`.

Loading never falls back to random weights: either the weights named by `pretrained` are
loaded, or `curate.errors.InputError` is raised with one line that says which weights, for
which model, and how to provide them. Random init happens only for the literal
`pretrained: none` (tests, smoke runs), and is reported by `LoadedModel.random_init`.
Tags and hf-hub ids are resolved to files here, cache first: a cached tag loads with no
network at all, and with HF_HUB_OFFLINE=1 a missing one fails in milliseconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from curate.errors import InputError

#: open_clip model JSONs shipped as package data; a pipeline names one by its file stem
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.json"))

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RANDOM_INIT = "none"
"""The `pretrained` value that asks for an explicitly randomly initialised model."""

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
"""Suffixes that make a `pretrained` value a file path rather than a tag."""

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
"""Pillow formats we decode (JPEG includes MPO). Web bytes are untrusted: formats such as EPS
would hand the data to Ghostscript, so only common raster formats are opened (AVIF where this
Pillow build has it). Pass `formats=None` to `decode_image` for everything Pillow opens."""

_DECODE_PREFIX = "image decode failed: "
_HUB_PREFIX = "hf-hub:"
_HUB_CONFIG = "open_clip_config.json"
_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_DEVICES = ("auto", "cpu", "cuda")
_PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Which CLIP model to load, and where it runs.

    A dataclass rather than pydantic: pydantic reserves the attribute name `model_config`.

    - `model`: an open_clip architecture name (`open_clip.list_models()`), e.g. "ViT-B-32".
      None: the stem of `model_config`. Ignored for `hf-hub:` ids and local-dir weights, whose
      `open_clip_config.json` names the architecture.
    - `pretrained`: a tag for that model ("openai", "laion2b_s34b_b79k", ...), an
      "hf-hub:org/name" id, a local checkpoint (.pt/.pth/.bin state dict, .safetensors, or a
      training checkpoint {"state_dict": {"module.…": …}}), a folder holding
      `open_clip_config.json` plus weights, or "none" for explicit random init.
    - `model_config`: path to a custom open_clip model JSON (embed_dim, vision_cfg, text_cfg);
      registered with `open_clip.add_model_config`, the model name is the file stem.
    - `device`: "auto" (cuda when visible), "cpu" or "cuda".
    - `precision`: "auto" (fp16 autocast on CUDA, fp32 on CPU), "fp32", "fp16", "bf16".
      Weights stay fp32; fp16/bf16 are autocast, outputs are always float32.
    - `cache_dir`: Hugging Face / open_clip download cache; None: their defaults.
    """

    pretrained: str
    model: str | None = None
    model_config: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.device not in _DEVICES:
            raise InputError(f"score.device: {self.device!r} is not one of {', '.join(_DEVICES)}")
        if self.precision not in _PRECISIONS:
            raise InputError(
                f"score.precision: {self.precision!r} is not one of {', '.join(_PRECISIONS)}"
            )
        if not isinstance(self.pretrained, str) or not self.pretrained.strip():
            raise InputError(
                "score.pretrained: required: a tag, an hf-hub:org/name id, a checkpoint path, "
                "or 'none' for random init"
            )


@dataclasses.dataclass
class LoadedModel:
    """A model ready to encode: eval mode, on `device`, with its val transform and tokenizer."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device
    embed_dim: int
    context_length: int
    random_init: bool
    name: str
    pretrained: str
    precision: str
    """The resolved precision: "fp32", "fp16" or "bf16" (autocast dtype for the latter two)."""
    image_size: tuple[int, int]
    """(height, width) of the model input."""


class ImageDecodeError(ValueError):
    """One image could not be decoded; the message is the per-row error string."""


# --------------------------------------------------------------------------- loading


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model named by `spec` and load its weights; raise InputError if they can't be."""
    import open_clip
    import torch

    device = _resolve_device(spec.device, torch)
    precision = _resolve_precision(spec.precision, device)
    pretrained = spec.pretrained.strip()
    random_init = pretrained.lower() == RANDOM_INIT
    kwargs: dict[str, Any] = {
        # Never let open_clip fetch tower weights (HF text, timm image) behind our back.
        "pretrained_text": False,
        "pretrained_image": False,
        "device": "cpu",
    }
    weights_desc = f"'{pretrained}'"

    local_dir = None
    if not random_init and pretrained.startswith(_HUB_PREFIX):
        local_dir = _resolve_hub_dir(pretrained[len(_HUB_PREFIX) :], spec.cache_dir)
    elif _looks_like_path(pretrained) and Path(pretrained).expanduser().is_dir():
        local_dir = Path(pretrained).expanduser().resolve()
        _check_weights_dir(local_dir, pretrained)

    if local_dir is not None:
        if spec.model or spec.model_config:
            log.info("score.model/model_config ignored: %s names its own architecture", pretrained)
        name = f"local-dir:{local_dir}"
        arch = pretrained
    else:
        name = _resolve_model_name(spec, open_clip)
        arch = name
        if random_init:
            kwargs["pretrained"] = None
        elif open_clip.get_pretrained_cfg(name, pretrained):
            path, tag_cfg = _resolve_tag(name, pretrained, spec.cache_dir)
            kwargs["pretrained"] = path
            # What open_clip does for a tag: the tag's mean/std/interpolation/resize mode...
            for key in ("mean", "std", "interpolation", "resize_mode"):
                if tag_cfg.get(key) is not None:
                    kwargs[f"image_{key}"] = tag_cfg[key]
            # ...plus QuickGELU where the weights were trained with it (open_clip only warns,
            # and ViT-B-32 + 'openai' without it gives degraded embeddings).
            if tag_cfg.get("quick_gelu") and not _model_cfg(open_clip, name).get("quick_gelu"):
                log.info("using QuickGELU for %s: tag '%s' was trained with it", name, pretrained)
                kwargs["force_quick_gelu"] = True
        else:
            path = Path(pretrained).expanduser()
            if path.is_file():
                kwargs["pretrained"] = str(path.resolve())
                weights_desc = f"'{path}'"
            elif _looks_like_path(pretrained):
                raise InputError(
                    f"score.pretrained: weights file '{path}' for {name} does not exist. Set "
                    "score.pretrained to an existing checkpoint (.pt/.bin/.safetensors), a tag "
                    f"(open_clip.list_pretrained_tags_by_model('{name}')), or 'none'"
                )
            else:
                raise InputError(_unknown_tag_message(open_clip, name, pretrained))

    model, preprocess = _create(open_clip, name, arch, weights_desc, random_init, kwargs)
    model = model.to(device).eval()
    try:
        tokenizer = open_clip.get_tokenizer(name, cache_dir=spec.cache_dir)
    except Exception as exc:  # HF tokenizers need `transformers` and the hub
        raise InputError(
            f"score.model: the tokenizer for {arch} could not be loaded ({_short(exc)})"
        ) from exc
    embed_dim = int(_model_cfg(open_clip, name)["embed_dim"])
    context_length = int(getattr(tokenizer, "context_length", 0) or model.context_length)
    image_size = _input_size(preprocess) or (0, 0)
    if random_init:
        log.warning("score.pretrained is 'none': %s has RANDOM weights (tests/smoke runs)", arch)
    log.info(
        "loaded %s weights %s on %s (%s), embed_dim %d, context %d, input %s",
        arch, weights_desc, device, precision, embed_dim, context_length, image_size,
    )  # fmt: skip
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=device,
        embed_dim=embed_dim,
        context_length=context_length,
        random_init=random_init,
        name=arch,
        pretrained=pretrained,
        precision=precision,
        image_size=image_size,
    )


def _create(open_clip, name, arch, weights_desc, random_init, kwargs):
    """open_clip's create_model_and_transforms, with its failures turned into one line."""
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
    except Exception as exc:
        reason = _short(exc)
        if random_init:
            raise InputError(f"score.model: could not build {arch}: {reason}") from exc
        if isinstance(exc, RuntimeError) and "state_dict" in str(exc):
            raise InputError(
                f"score.pretrained: weights {weights_desc} do not fit {arch} ({reason}). Set "
                "score.model to the architecture the checkpoint was trained with"
            ) from exc
        hint = ""
        if "TorchScript" in str(exc):
            hint = (
                ". TorchScript archives (OpenAI's original .pt) are not loaded: use the tag, "
                "or save torch.jit.load(path).state_dict() with torch.save"
            )
        raise InputError(
            f"score.pretrained: weights {weights_desc} for {arch} could not be loaded "
            f"({reason}){hint}"
        ) from exc
    return model, preprocess


def _resolve_device(device: str, torch) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "score.device: 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'"
        )
    return torch.device(device)


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision != "fp32" and device.type == "cpu":
        log.warning("score.precision %s on CPU: autocast works but is slower than fp32", precision)
    return precision


def _resolve_model_name(spec: ModelSpec, open_clip) -> str:
    """Register `model_config` if given, and check the name is one open_clip can build."""
    model = spec.model.replace("/", "-") if spec.model else None
    if spec.model_config:
        stem = _register_model_config(spec.model_config, open_clip)
        if model and model != stem:
            raise InputError(
                f"score.model: {spec.model!r} is not the model defined by score.model_config "
                f"({spec.model_config} defines {stem!r}); set score.model to {stem!r} or leave "
                "it unset"
            )
        return stem
    if not model:
        raise InputError("score.model: required (an open_clip name such as 'ViT-B-32')")
    models = open_clip.list_models()
    if model not in models:
        close = difflib.get_close_matches(model, models, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(
            f"score.model: unknown open_clip model {spec.model!r}; {hint}valid names: "
            f"open_clip.list_models() ({len(models)} models, e.g. ViT-B-32, ViT-B-16, "
            "ViT-L-14), or a custom JSON via score.model_config"
        )
    return model


def _register_model_config(path_str: str, open_clip) -> str:
    """Validate the JSON first: open_clip keeps every added path and re-reads them all on each
    add, so one broken file registered would break every later registration."""
    path = Path(path_str).expanduser()
    bundled = BUNDLED_CONFIGS / f"{path_str}.json"
    if not path.is_file() and bundled.is_file():  # a bundled config named by its stem
        path = bundled
    if not path.is_file():
        raise InputError(f"score.model_config: {path} does not exist (an open_clip model JSON "
                         f"or a bundled name: {', '.join(bundled_configs())})")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"score.model_config: {path} is not valid JSON ({_short(exc)})") from exc
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if not isinstance(cfg, dict) or missing:
        raise InputError(
            f"score.model_config: {path} is not an open_clip model config (missing "
            f"{', '.join(missing) or 'a JSON object'})"
        )
    if path.stem in open_clip.list_models():
        log.info("score.model_config %s (re)defines open_clip model %r", path, path.stem)
    open_clip.add_model_config(path)
    return path.stem


def _model_cfg(open_clip, name: str) -> dict:
    return open_clip.get_model_config(name) or {}


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now: huggingface_hub reads it once at import, so a value set later
    (tests, a CLI flag) would otherwise be ignored and a download wait ~46 s on DNS."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    if any(v.strip().upper() in ("1", "ON", "YES", "TRUE") for v in flags):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _offline_hint(what: str, name: str, where: str) -> str:
    return (
        f"score.pretrained: weights {what} for {name} could not be loaded (offline: "
        f"HF_HUB_OFFLINE=1 and {where} is not in the local cache). Download them where internet "
        "exists and set score.pretrained to the local file path, or list valid tags with "
        "open_clip.list_pretrained()"
    )


def _resolve_tag(name: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """A tag's weights as a local file: the cached copy if there is one, else a download.

    Resolving the tag here rather than passing it to open_clip makes offline mode fail in
    milliseconds whatever huggingface_hub read at import time, and lets a cached tag load
    without network at all (huggingface_hub would first ask the hub for a newer revision:
    with no network that is ~76 s of retries here, safetensors then .bin). A published tag's
    weights do not change, so the cached copy is the one to use.
    """
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("file"):
        return cfg["file"], cfg
    hub = cfg.get("hf_hub", "")
    if hub and oc_pretrained.has_hf_hub():
        repo, filename = os.path.split(hub)
        names = _safetensors_first([filename or _HUB_WEIGHTS[1]])
        for fn in names:
            path = _hub_cached(repo, fn, cache_dir)
            if path:
                return path, cfg
        where = f"hf-hub {repo}/{names[-1]}"
    else:
        url = cfg.get("url", "")
        cached = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(url)
        if url and cached.is_file():
            return str(cached), cfg
        where = url or "the weights"
    if _offline():
        raise InputError(_offline_hint(f"'{tag}'", name, where))
    try:
        path = oc_pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:
        raise InputError(
            f"score.pretrained: weights '{tag}' for {name} could not be downloaded "
            f"({_short(exc)}). Download them where internet exists and set score.pretrained to "
            "the local file path (set HF_HUB_OFFLINE=1 to skip network attempts)"
        ) from exc
    if not path:
        raise InputError(f"score.pretrained: tag '{tag}' for {name} names no weights to download")
    return path, cfg


def _safetensors_first(names: list[str]) -> list[str]:
    """The .safetensors twin of a .bin/.pth hub file is preferred, as open_clip does."""
    out = []
    for fn in names:
        if fn == _HUB_WEIGHTS[1]:
            out.append(_HUB_WEIGHTS[0])
        elif fn.endswith((".bin", ".pth")):
            out.append(fn[:-4] + ".safetensors")
        out.append(fn)
    return out


def _hub_cached(repo: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _resolve_hub_dir(repo: str, cache_dir: str | None) -> Path:
    """An hf-hub:org/name id as a local folder (config + weights), for open_clip's local-dir:
    the cached snapshot if complete, else downloaded (see `_resolve_tag` for why)."""
    what = f"'{_HUB_PREFIX}{repo}'"
    if not repo or "/" not in repo:
        raise InputError(f"score.pretrained: {what} is not an hf-hub:org/name id")
    config = _hub_cached(repo, _HUB_CONFIG, cache_dir)
    weights = next((p for fn in _HUB_WEIGHTS if (p := _hub_cached(repo, fn, cache_dir))), None)
    if (not config or not weights) and _offline():
        missing = _HUB_CONFIG if not config else " or ".join(_HUB_WEIGHTS)
        raise InputError(_offline_hint(what, repo, f"hf-hub {repo}/{missing}"))
    if not config or not weights:
        from open_clip import pretrained as oc_pretrained

        try:
            config = oc_pretrained.download_pretrained_from_hf(
                repo, filename=_HUB_CONFIG, cache_dir=cache_dir
            )
            weights = oc_pretrained.download_pretrained_from_hf(repo, cache_dir=cache_dir)
        except Exception as exc:
            raise InputError(
                f"score.pretrained: weights {what} could not be downloaded ({_short(exc)}). "
                "Download them where internet exists and set score.pretrained to the local "
                "folder (open_clip_config.json + weights)"
            ) from exc
    folder = Path(config).parent
    if Path(weights).parent != folder:
        raise InputError(f"score.pretrained: {what}: config and weights are in different caches")
    return folder


def _check_weights_dir(folder: Path, pretrained: str) -> None:
    """open_clip's local-dir loader warns and random-inits when no weights are there: refuse."""
    if not (folder / _HUB_CONFIG).is_file():
        raise InputError(
            f"score.pretrained: folder '{pretrained}' has no {_HUB_CONFIG}; point "
            "score.pretrained at the checkpoint file instead and set score.model"
        )
    if not any(any(folder.glob(f"*{s}")) for s in (".safetensors", ".bin", ".pth")):
        raise InputError(
            f"score.pretrained: folder '{pretrained}' has no weights (*.safetensors, *.bin, *.pth)"
        )


def _looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or "\\" in value
        or value.startswith(("~", "."))
        or value.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def _unknown_tag_message(open_clip, name: str, tag: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tags:
        valid = f"valid tags for {name}: {', '.join(tags)}"
    else:
        valid = f"{name} has no pretrained tags"
    elsewhere = open_clip.list_pretrained_models_by_tag(tag)
    if elsewhere:
        more = "…" if len(elsewhere) > 6 else ""
        valid += f"; '{tag}' is a tag of {', '.join(elsewhere[:6])}{more}"
    return (
        f"score.pretrained: weights '{tag}' for {name} are not a known tag or an existing file; "
        f"{valid} (or a checkpoint path, an hf-hub:org/name id, or 'none' for random init)"
    )


def _short(exc: BaseException, limit: int = 240) -> str:
    """One line of an exception: state_dict errors span many lines, some messages are huge."""
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- images


def decode_image(
    data: bytes | None,
    *,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = IMAGE_FORMATS,
) -> Image.Image:
    """Decode encoded image bytes to an RGB PIL image; raise ImageDecodeError on failure.

    Thread-safe (Pillow releases the GIL while decoding, so a thread pool scales).

    Converting to RGB right after decoding is what open_clip's training loader does
    (webdataset "pilrgb"); open_clip's val transform converts only after resizing, which for
    palette images means a nearest-neighbour resize. RGB inputs are unaffected.
    EXIF orientation is not applied (neither open_clip nor webdataset applies it).

    `draft_size` (width, height): let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, never
    below this size. `max_pixels`: decompression-bomb limit, default PIL's MAX_IMAGE_PIXELS.
    """
    if not data:
        raise ImageDecodeError(_DECODE_PREFIX + "no image bytes")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    # No warnings.catch_warnings() here: callers decode on threads, and it swaps the
    # process-wide filter list without a lock (a thread can leave another's filters in place).
    try:
        img = Image.open(io.BytesIO(data), formats=_available(formats))
        w, h = img.size
        if limit and w * h > limit:
            raise ImageDecodeError(
                f"{_DECODE_PREFIX}image too large ({w}x{h} = {w * h} pixels > {limit})"
            )
        if draft_size is not None and img.format in ("JPEG", "MPO"):
            img.draft("RGB", draft_size)
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(_DECODE_PREFIX + "not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(_DECODE_PREFIX + "image too large (decompression bomb)") from exc
    except Exception as exc:  # truncated/corrupt streams: OSError, SyntaxError, ValueError...
        raise ImageDecodeError(_DECODE_PREFIX + _short(exc, 160)) from exc


@functools.cache
def _available_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in formats if f in Image.OPEN)


def _available(formats: Sequence[str] | None) -> tuple[str, ...] | None:
    """Image.open raises KeyError for a format this Pillow build lacks (AVIF, say)."""
    return None if formats is None else _available_formats(tuple(f.upper() for f in formats))


def preprocess_images(
    images: Sequence[bytes | None],
    preprocess,
    *,
    fast_decode: bool = False,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, np.ndarray, list[str | None]]:
    """Decode and preprocess a batch; a bad image is an error string, never an exception.

    Returns (tensor [m, 3, H, W] for the m images that worked, their indices into `images`
    as int64, and one error string or None per input).

    `fast_decode` lets libjpeg decode large JPEGs at 1/2..1/8 scale, never below the model
    input (so the resize that follows is still a downscale). Measured on 640x480 JPEGs: ~1.4x
    faster preprocessing for a 224 input, ~2x for 64. The pixels differ from a full decode
    (libjpeg's DCT scaling is not a bicubic filter; ViT-B-32 tensors: mean |diff| 0.03, max 1.0
    in normalised units), so embeddings move a little (random-init ViT-B-32: cosine to the
    full-decode embedding >= 0.9998). Off by default: the default matches open_clip exactly.
    """
    import torch

    size = _input_size(preprocess)
    draft = (size[1], size[0]) if fast_decode and size else None
    tensors, ok, errors = [], [], []
    for i, data in enumerate(images):
        try:
            img = decode_image(data, draft_size=draft, max_pixels=max_pixels)
            tensor = preprocess(img)
        except ImageDecodeError as exc:
            errors.append(str(exc))
            continue
        except Exception as exc:  # a transform failing on an odd image must not end the batch
            errors.append(_DECODE_PREFIX + _short(exc, 160))
            continue
        tensors.append(tensor)
        ok.append(i)
        errors.append(None)
    if tensors:
        batch = torch.stack(tensors)
    else:
        batch = torch.empty((0, 3, *(size or (0, 0))), dtype=torch.float32)
    return batch, np.asarray(ok, dtype=np.int64), errors


def _input_size(preprocess) -> tuple[int, int] | None:
    """(height, width) the val transform produces: the last transform with a `size`
    (CenterCrop after Resize, or Resize alone for 'squash')."""
    size = None
    for t in getattr(preprocess, "transforms", ()):
        if getattr(t, "size", None) is not None:
            size = t.size
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


# --------------------------------------------------------------------------- encoding


def encode_images(loaded: LoadedModel, images: torch.Tensor) -> np.ndarray:
    """L2-normalised image embeddings, float32 [m, D]."""
    import torch

    if len(images) == 0:
        return np.zeros((0, loaded.embed_dim), dtype=np.float32)
    with torch.inference_mode(), _autocast(loaded):
        feats = loaded.model.encode_image(images.to(loaded.device, non_blocking=True))
    return _normalise(feats)


def encode_texts(loaded: LoadedModel, captions: Sequence[str | None]) -> np.ndarray:
    """L2-normalised text embeddings, float32 [m, D].

    Captions must be str; None counts as "" (a missing caption). Anything else is a TypeError:
    turning NaN or bytes into "nan"/"b'…'" silently would give them real scores. Captions
    longer than the context are truncated by open_clip's tokenizer (end token kept).
    """
    import torch

    texts = _captions(captions)
    if not texts:
        return np.zeros((0, loaded.embed_dim), dtype=np.float32)
    tokens = loaded.tokenizer(texts)
    with torch.inference_mode(), _autocast(loaded):
        feats = loaded.model.encode_text(tokens.to(loaded.device, non_blocking=True))
    return _normalise(feats)


def encode(
    loaded: LoadedModel, images: torch.Tensor, captions: Sequence[str | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_emb, text_emb, clip_score) for aligned images and captions.

    clip_score is the cosine of the pair: the row-wise dot product of the two returned
    normalised float32 embeddings (DataComp's scale; LAION's 0.28 for ViT-B/32 is on it too).
    """
    if len(images) != len(captions):
        raise ValueError(f"encode: {len(images)} images but {len(captions)} captions")
    image_emb = encode_images(loaded, images)
    text_emb = encode_texts(loaded, captions)
    score = np.einsum("ij,ij->i", image_emb, text_emb).astype(np.float32, copy=False)
    return image_emb, text_emb, score


def _captions(captions: Sequence[str | None]) -> list[str]:
    out = []
    for i, c in enumerate(captions):
        if c is None:
            out.append("")
        elif isinstance(c, str):
            out.append(c)
        else:
            raise TypeError(f"caption {i} is {type(c).__name__}, not str (None means missing)")
    return out


def _autocast(loaded: LoadedModel):
    import torch

    if loaded.precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if loaded.precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=loaded.device.type, dtype=dtype)


def _normalise(feats: torch.Tensor) -> np.ndarray:
    import torch

    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)
