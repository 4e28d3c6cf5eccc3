"""What a CLIP model is asked for (`ModelSpec`) and what loading hands back (`LoadedModel`).

Kept apart from the loader so that config and the score stage's planning side can name a
model without importing the loading code, and so that every other module of the model layer
(weights, images, encode) shares one definition. Neither torch nor open_clip is imported
here: `ModelSpec` validates plain strings.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from curate.errors import InputError

if TYPE_CHECKING:
    import torch

RANDOM_INIT = "none"
"""The `pretrained` value that asks for an explicitly randomly initialised model."""

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
