"""Load a CLIP model for the score stage: build the architecture, load its weights, on a device.

The model layer, one job per module:

- `curate.models.spec`: `ModelSpec` (what to load) and `LoadedModel` (what loading returns).
- `curate.models.weights`: a tag, hf-hub id, file or folder resolved to local weights.
- this module: `load_model`, which builds the model from those and puts it on its device.
- `curate.models.images`: decode and preprocess images (decode workers).
- `curate.models.encode`: embed and score (one model actor per device).

No Ray and no file I/O beyond reading weights and a model config. torch and open_clip are
imported inside `load_model`: importing them takes ~7 s on these machines.

Loading never falls back to random weights: either the weights named by `pretrained` are
loaded, or `curate.errors.InputError` is raised with one line that says which weights, for
which model, and how to provide them. Random init happens only for the literal
`pretrained: none` (tests, smoke runs), and is reported by `LoadedModel.random_init`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import InputError
from curate.models.images import input_size
from curate.models.oneline import one_line
from curate.models.spec import RANDOM_INIT, LoadedModel, ModelSpec
from curate.models.weights import (
    HUB_PREFIX,
    check_weights_dir,
    looks_like_path,
    model_cfg,
    resolve_hub_dir,
    resolve_model_name,
    resolve_tag,
    unknown_tag_message,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


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
    if not random_init and pretrained.startswith(HUB_PREFIX):
        local_dir = resolve_hub_dir(pretrained[len(HUB_PREFIX) :], spec.cache_dir)
    elif looks_like_path(pretrained) and Path(pretrained).expanduser().is_dir():
        local_dir = Path(pretrained).expanduser().resolve()
        check_weights_dir(local_dir, pretrained)

    if local_dir is not None:
        if spec.model or spec.model_config:
            log.info("score.model/model_config ignored: %s names its own architecture", pretrained)
        name = f"local-dir:{local_dir}"
        arch = pretrained
    else:
        name = resolve_model_name(spec, open_clip)
        arch = name
        if random_init:
            kwargs["pretrained"] = None
        elif open_clip.get_pretrained_cfg(name, pretrained):
            path, tag_cfg = resolve_tag(name, pretrained, spec.cache_dir)
            kwargs["pretrained"] = path
            # What open_clip does for a tag: the tag's mean/std/interpolation/resize mode...
            for key in ("mean", "std", "interpolation", "resize_mode"):
                if tag_cfg.get(key) is not None:
                    kwargs[f"image_{key}"] = tag_cfg[key]
            # ...plus QuickGELU where the weights were trained with it (open_clip only warns,
            # and ViT-B-32 + 'openai' without it gives degraded embeddings).
            if tag_cfg.get("quick_gelu") and not model_cfg(open_clip, name).get("quick_gelu"):
                log.info("using QuickGELU for %s: tag '%s' was trained with it", name, pretrained)
                kwargs["force_quick_gelu"] = True
        else:
            path = Path(pretrained).expanduser()
            if path.is_file():
                kwargs["pretrained"] = str(path.resolve())
                weights_desc = f"'{path}'"
            elif looks_like_path(pretrained):
                raise InputError(
                    f"score.pretrained: weights file '{path}' for {name} does not exist. Set "
                    "score.pretrained to an existing checkpoint (.pt/.bin/.safetensors), a tag "
                    f"(open_clip.list_pretrained_tags_by_model('{name}')), or 'none'"
                )
            else:
                raise InputError(unknown_tag_message(open_clip, name, pretrained))

    model, preprocess = _create(open_clip, name, arch, weights_desc, random_init, kwargs)
    model = model.to(device).eval()
    try:
        tokenizer = open_clip.get_tokenizer(name, cache_dir=spec.cache_dir)
    except Exception as exc:  # HF tokenizers need `transformers` and the hub
        raise InputError(
            f"score.model: the tokenizer for {arch} could not be loaded ({one_line(exc)})"
        ) from exc
    embed_dim = int(model_cfg(open_clip, name)["embed_dim"])
    context_length = int(getattr(tokenizer, "context_length", 0) or model.context_length)
    image_size = input_size(preprocess) or (0, 0)
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
        reason = one_line(exc)
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
