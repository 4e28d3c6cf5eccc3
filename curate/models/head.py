"""Classifier heads on CLIP embeddings: LAION's bundled aesthetic heads, or a file a user brings.

A head is a PyTorch state dict of ``nn.Linear`` layers applied in order (``weight`` [out,
in], ``bias`` [out]; the last layer has one output), optionally after a leading Keras-style
normalisation (``<prefix>mean``, ``<prefix>variance``: LAION's NSFW heads); any other entry
is refused, so a head is never applied in part: LAION-Aesthetics V1 is one such layer,
LAION's improved predictor (V2) and typical NSFW or watermark heads trained on CLIP
embeddings are a few. The state dict names no activation, so the stage says which one goes
between layers (LAION's V2 MLP uses none). Loading is the only torch here: the layers come
back as float32 NumPy arrays, and scoring is :func:`curate.algorithms.heads.head_scores`.

The bundled heads (``heads/``, MIT, source and commit in ``heads/README.md``) are named by the
CLIP model whose image embeddings they were trained on: LAION's aesthetic heads
(``BUNDLED``) and LAION's CLIP-based NSFW detector with clip-retrieval's violence prompts
(``NSFW``, the ``nsfw`` stage).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.algorithms.heads import Head
from curate.errors import InputError

HEADS_DIR = Path(__file__).resolve().parent / "heads"

#: bundled LAION-Aesthetics V1 heads: name -> (file, embedding size, open_clip model name)
BUNDLED = {
    "vit_b_32": ("sa_0_4_vit_b_32_linear.pth", 512, "ViT-B-32"),
    "vit_b_16": ("sa_0_4_vit_b_16_linear.pth", 512, "ViT-B-16"),
    "vit_l_14": ("sa_0_4_vit_l_14_linear.pth", 768, "ViT-L-14"),
}

#: LAION's CLIP-based NSFW detector (MIT, heads/LICENSE-nsfw-detector): nsfw model name ->
#: (head file, violence prompts file, embedding size, open_clip model name; pretrained openai)
NSFW = {
    "vit_b_32": ("clip_ViT-B-32_openai_binary_nsfw_head.pth",
                 "violence_detection_vit_b_32.npy", 512, "ViT-B-32"),
    "vit_l_14": ("clip_ViT-L-14_openai_binary_nsfw_head.pth",
                 "violence_detection_vit_l_14.npy", 768, "ViT-L-14"),
}
NSFW_SOURCE = ("LAION-AI/CLIP-based-NSFW-Detector", "21072a2a38e6d2bb294be03c005aaa9a65778e47")
NSFW_LICENCE = "MIT, Copyright 2022 Christoph Schuhmann (LICENSE-nsfw-detector)"

Layers = Head


def head_path(name: str) -> Path:
    """The file of a bundled head name, or ``name`` as a path."""
    if name in BUNDLED:
        return HEADS_DIR / BUNDLED[name][0]
    path = Path(name)
    if not path.is_file():
        raise InputError(f"head {name}: no such file (bundled heads: {', '.join(BUNDLED)})")
    return path


def load_head(name: str) -> Layers:
    """(weight, bias) per layer, in order, as float32, and the leading normalisation if any
    (``Head.norm``); errors name the file and the fault (and the entry)."""
    import torch

    path = head_path(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"head {path}: not a PyTorch state dict ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    if hasattr(state, "state_dict"):  # a whole pickled module
        state = state.state_dict()
    if not isinstance(state, dict) or not state:
        raise InputError(f"head {path}: expected a state dict of linear layers")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"head {path}: entry {key!r} is a {type(value).__name__}, not a "
                             "tensor; a head is a state dict of tensors")
    return _layers(path, {k: v.detach().float().numpy() for k, v in state.items()})


def _layers(path: Path, arrays: dict[str, np.ndarray]) -> Head:
    """Every entry of the state dict, in order: an optional leading normalisation
    (``<prefix>mean`` and ``<prefix>variance``, 1-D, the input width), then 2-D ``*weight``s
    each with its ``*bias``, chained. Any other entry is refused, naming it: a head is
    applied whole or not at all."""
    if not any(k.endswith("weight") for k in arrays):
        raise InputError(f"head {path}: no linear layer (no '*weight' entry) in the state dict")
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    norm: dict[str, tuple[str, np.ndarray]] = {}
    used: set[str] = set()
    for key, w in arrays.items():
        if key in used:
            continue
        if key.endswith(("mean", "variance")) and not layers:
            stat = "mean" if key.endswith("mean") else "variance"
            if stat in norm or w.ndim != 1:
                raise InputError(f"head {path}: entry {key!r} (shape {w.shape}) is not "
                                 "understood: a head is an optional normalisation (1-D "
                                 "mean, variance) and nn.Linear layers")
            norm[stat] = (key, w)
            continue
        if not key.endswith("weight"):
            raise InputError(f"head {path}: entry {key!r} (shape {w.shape}) is not a linear "
                             "layer's weight or bias nor a leading mean/variance; refusing "
                             "a head that would be applied in part")
        bias_key = key[: -len("weight")] + "bias"
        if w.ndim != 2 or bias_key not in arrays or arrays[bias_key].shape != (w.shape[0],):
            raise InputError(f"head {path}: {key} is not a linear layer's weight with a bias "
                             f"(shape {w.shape}); heads are chains of nn.Linear layers")
        if layers and layers[-1][0].shape[0] != w.shape[1]:
            raise InputError(f"head {path}: {key} takes {w.shape[1]} inputs but the layer "
                             f"before gives {layers[-1][0].shape[0]}")
        used.add(bias_key)
        layers.append((np.ascontiguousarray(w, np.float32), arrays[bias_key].astype(np.float32)))
    if layers[-1][0].shape[0] != 1:
        raise InputError(f"head {path}: the last layer gives {layers[-1][0].shape[0]} outputs; "
                         "a head scores each embedding with one number")
    return Head(layers, _norm(path, norm, layers[0][0].shape[1]))


def _norm(path: Path, norm: dict[str, tuple[str, np.ndarray]], width: int
          ) -> tuple[np.ndarray, np.ndarray] | None:
    if not norm:
        return None
    if len(norm) == 1:
        key = next(iter(norm.values()))[0]
        raise InputError(f"head {path}: entry {key!r} has no "
                         f"{'variance' if 'mean' in norm else 'mean'} beside it; a leading "
                         "normalisation needs both")
    (mk, mean), (vk, var) = norm["mean"], norm["variance"]
    if mk[: -len("mean")] != vk[: -len("variance")]:
        raise InputError(f"head {path}: entries {mk!r} and {vk!r} are not one normalisation")
    for key, arr in ((mk, mean), (vk, var)):
        if arr.shape != (width,):
            raise InputError(f"head {path}: entry {key!r} has shape {arr.shape} but the first "
                             f"layer takes {width} inputs")
    if np.any(var < 0):
        raise InputError(f"head {path}: entry {vk!r} has negative variances")
    return mean.astype(np.float32), var.astype(np.float32)


def nsfw_path(model: str, which: str = "head") -> Path:
    """The bundled file of LAION's NSFW detector for ``model``: its head or its violence
    prompts (``which="prompts"``)."""
    return HEADS_DIR / NSFW[model][0 if which == "head" else 1]


def load_prompts(model: str) -> np.ndarray:
    """clip-retrieval's two violence prompt embeddings for ``model``, float32 [2, d]."""
    return np.load(nsfw_path(model, "prompts")).astype(np.float32)
