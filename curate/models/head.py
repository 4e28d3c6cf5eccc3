"""Classifier heads on CLIP embeddings: LAION's bundled aesthetic heads, or a file a user brings.

A head is a PyTorch state dict of ``nn.Linear`` layers applied in order (``weight`` [out,
in], ``bias`` [out]; the last layer has one output): LAION-Aesthetics V1 is one such layer,
LAION's improved predictor (V2) and typical NSFW or watermark heads trained on CLIP
embeddings are a few. The state dict names no activation, so the stage says which one goes
between layers (LAION's V2 MLP uses none). Loading is the only torch here: the layers come
back as float32 NumPy arrays, and scoring is :func:`curate.algorithms.heads.head_scores`.

The bundled heads (``heads/``, MIT, source and commit in ``heads/README.md``) are named by the
CLIP model whose image embeddings they were trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.errors import InputError

HEADS_DIR = Path(__file__).resolve().parent / "heads"

#: bundled LAION-Aesthetics V1 heads: name -> (file, embedding size, open_clip model name)
BUNDLED = {
    "vit_b_32": ("sa_0_4_vit_b_32_linear.pth", 512, "ViT-B-32"),
    "vit_b_16": ("sa_0_4_vit_b_16_linear.pth", 512, "ViT-B-16"),
    "vit_l_14": ("sa_0_4_vit_l_14_linear.pth", 768, "ViT-L-14"),
}

Layers = list[tuple[np.ndarray, np.ndarray]]


def head_path(name: str) -> Path:
    """The file of a bundled head name, or ``name`` as a path."""
    if name in BUNDLED:
        return HEADS_DIR / BUNDLED[name][0]
    path = Path(name)
    if not path.is_file():
        raise InputError(f"head {name}: no such file (bundled heads: {', '.join(BUNDLED)})")
    return path


def load_head(name: str) -> Layers:
    """(weight, bias) per layer, in order, as float32; errors name the file and the fault."""
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
    return _layers(path, {k: v.detach().float().numpy() for k, v in state.items()})


def _layers(path: Path, arrays: dict[str, np.ndarray]) -> Layers:
    """Pair each 2-D ``*weight`` with its ``*bias`` (in the dict's order) and check the chain."""
    layers: Layers = []
    for key, w in arrays.items():
        if not key.endswith("weight"):
            continue
        bias_key = key[: -len("weight")] + "bias"
        if w.ndim != 2 or bias_key not in arrays or arrays[bias_key].shape != (w.shape[0],):
            raise InputError(f"head {path}: {key} is not a linear layer's weight with a bias "
                             f"(shape {w.shape}); heads are chains of nn.Linear layers")
        if layers and layers[-1][0].shape[0] != w.shape[1]:
            raise InputError(f"head {path}: {key} takes {w.shape[1]} inputs but the layer "
                             f"before gives {layers[-1][0].shape[0]}")
        layers.append((np.ascontiguousarray(w, np.float32), arrays[bias_key].astype(np.float32)))
    if not layers:
        raise InputError(f"head {path}: no linear layer (no '*weight' entry) in the state dict")
    if layers[-1][0].shape[0] != 1:
        raise InputError(f"head {path}: the last layer gives {layers[-1][0].shape[0]} outputs; "
                         "a head scores each embedding with one number")
    return layers
