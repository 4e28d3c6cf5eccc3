"""Where FAISS runs for k-means: pick the device, build an exact inner-product index there.

Shared by training (`curate.algorithms.kmeans`) and assignment
(`curate.algorithms.kmeans_model`), which must agree on what "a usable GPU" means: a model
trained on a GPU assigns on CPU where none is visible.
"""

from __future__ import annotations

from typing import Any, Literal

import faiss

Device = Literal["cpu", "gpu"]


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu, or faiss-gpu on a machine without a GPU)."""
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds may lack the symbol
        return 0


def resolve_device(use_gpu: bool | None) -> Device:
    """Pick the FAISS device: ``None`` = GPU when one is visible, else CPU.

    ``use_gpu=True`` on a machine without a usable GPU raises ``RuntimeError`` instead of
    silently running (much slower) on CPU: a user who asked for a GPU wants to know.
    """
    n = gpu_count()
    if use_gpu is False:
        return "cpu"
    if n > 0 and hasattr(faiss, "StandardGpuResources"):
        return "gpu"
    if use_gpu:
        raise RuntimeError(
            "use_gpu=True but FAISS sees no GPU (faiss.get_num_gpus() == 0 or a CPU-only "
            "faiss build); set use_gpu to null/auto or false to run on CPU"
        )
    return "cpu"


def ip_index(d: int, device: Device) -> tuple[Any, Any]:
    """An exact inner-product index on ``device``; returns (index, gpu resources or None).

    The resources object must outlive the index, so callers keep both.
    """
    if device == "gpu":
        res = faiss.StandardGpuResources()
        return faiss.GpuIndexFlatIP(res, d), res
    return faiss.IndexFlatIP(d), None
