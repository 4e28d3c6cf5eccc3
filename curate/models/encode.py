"""Preprocessed images and captions to L2-normalised CLIP embeddings and the CLIP score.

The model actor's half of scoring (decode workers run `curate.models.images`): inference
mode, autocast at the loaded precision, float32 NumPy out. torch is imported inside the
functions (it takes seconds), so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np

from curate.models.spec import LoadedModel

if TYPE_CHECKING:
    import torch


def encode_images(loaded: LoadedModel, images: torch.Tensor) -> np.ndarray:
    """L2-normalised image embeddings, float32 [m, D].

    `images` may already be on the model's device (``decode: gpu``): then ``.to`` is a no-op.
    From pinned host memory (the score stage's CPU decoders on CUDA) the copy is asynchronous
    (``non_blocking``) and ordered before the model's kernels on the same stream."""
    import torch

    if len(images) == 0:
        return np.zeros((0, loaded.embed_dim), dtype=np.float32)
    with torch.inference_mode(), autocast(loaded):
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
    with torch.inference_mode(), autocast(loaded):
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


def autocast(loaded: LoadedModel):
    """Autocast at the loaded precision (fp16 or bf16), or nothing for fp32."""
    import torch

    if loaded.precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if loaded.precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=loaded.device.type, dtype=dtype)


def _normalise(feats: torch.Tensor) -> np.ndarray:
    import torch

    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)
