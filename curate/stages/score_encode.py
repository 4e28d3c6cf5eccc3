"""The score stage's model half of a shard: decode images (threads, one batch ahead) and
encode them with the captions, batch by batch.

Apart from :mod:`curate.stages.score` (the stage: inputs, basic filters, score filters,
output) because this half is about keeping one device busy: ``score.decode`` picks the
decoder (``exact``: open_clip's preprocess; ``fast``: :mod:`curate.models.fast_preprocess`;
``gpu``: :mod:`curate.models.gpu_decode`, on the model's device), ``score.batch_size: auto``
sizes batches from the free GPU memory, and on CUDA the CPU-decoded batches are assembled in
pinned host memory so that their copy to the device is asynchronous.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
_AUTO: dict[tuple[int, str], int] = {}

DEFAULT_BATCH = 256
"""``batch_size: auto`` without CUDA (the configured default)."""
AUTO_CAP = 1024
"""``batch_size: auto`` never goes above this: beyond it a GPU is already saturated and a
failed shard costs more."""
MEMORY_SHARE = 0.5
"""Share of the free GPU memory ``batch_size: auto`` plans to use: the rest covers the text
tower, the allocator's fragmentation and other processes on the same GPU."""
GPU_DECODE_BYTES = 32 << 20
"""GPU memory per image that ``decode: gpu`` holds besides the model's: the decoded JPEG
(a 2,000 x 1,500 photo is 9 MB as uint8) and its float32 copy while it is resampled."""


def encode_rows(loaded: Any, inputs: pa.Table, todo: np.ndarray, captions: list[str | None],
                *, decode: str, batch_size: int | str, cpus: int):
    """(image_emb, text_emb, scores, errors) for every row; rows in ``todo`` are decoded
    (threads) and encoded (model), the rest stay zero / NaN / None."""
    from curate.models.encode import encode

    n = inputs.num_rows
    images = inputs["image"].to_pylist() if "image" in inputs.column_names else [None] * n
    idx = np.flatnonzero(todo)
    d = loaded.embed_dim
    img_emb = np.zeros((n, d), np.float32)
    txt_emb = np.zeros((n, d), np.float32)
    scores = np.full(n, np.nan, np.float32)
    errs: list[str | None] = [None] * n
    bs = resolve_batch_size(batch_size, loaded, decode)
    # half the cores decode the next batch while torch encodes this one
    workers = max(1, cpus // 2)
    on_gpu = loaded.device.type == "cuda"
    # gpu decode on CUDA: one batched nvJPEG call per batch; on the CPU, split over the threads
    sub = bs if decode == "gpu" and on_gpu else max(1, math.ceil(bs / workers))
    fn = decoder(decode, loaded.device)

    def prep(rows: np.ndarray):
        return rows, fn([images[i] for i in rows], loaded.preprocess)

    batches = [idx[i:i + bs] for i in range(0, len(idx), bs)]
    with ThreadPoolExecutor(workers) as pool:
        # decode the next batch on the thread pool while the model encodes this one
        def submit(batch: np.ndarray):
            return [pool.submit(prep, batch[j:j + sub]) for j in range(0, len(batch), sub)]

        ahead = submit(batches[0]) if batches else []
        for b in range(len(batches)):
            parts = [f.result() for f in ahead]
            ahead = submit(batches[b + 1]) if b + 1 < len(batches) else []
            tensors, goods = [], []
            for rows, (tensor, ok, perr) in parts:
                for j, e in enumerate(perr):
                    if e is not None:
                        errs[rows[j]] = e
                if len(rows[ok]):
                    tensors.append(tensor)
                    goods.append(rows[ok])
            if not goods:
                continue
            # one model call per batch_size pairs, however many threads decoded it
            good = np.concatenate(goods)
            batch = assemble(tensors, loaded.device)
            ie, te, sc = encode(loaded, batch, [captions[i] for i in good])
            img_emb[good], txt_emb[good], scores[good] = ie, te, sc
    return img_emb, txt_emb, scores, errs


def decoder(decode: str, device: torch.device):
    """The batch function of ``score.decode``; all share preprocess_images' contract."""
    if decode == "fast":
        from curate.models.fast_preprocess import fast_batch

        return fast_batch
    if decode == "gpu":
        from curate.models.gpu_decode import gpu_batch

        return partial(gpu_batch, device=device)  # the model's device: CPU when it is there
    from curate.models.images import preprocess_images

    return preprocess_images


def assemble(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One batch tensor from the decode threads' parts. Parts already on the device (``decode:
    gpu``) are concatenated there; CPU parts for a CUDA model go into pinned host memory, so
    that ``encode_images``' ``non_blocking`` copy is an asynchronous DMA (the one copy that
    concatenating makes anyway, into page-locked memory instead of pageable)."""
    import torch

    if device.type != "cuda" or tensors[0].device.type != "cpu":
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
    m = sum(len(t) for t in tensors)
    batch = torch.empty((m, *tensors[0].shape[1:]), dtype=tensors[0].dtype, pin_memory=True)
    return torch.cat(tensors, out=batch)


def resolve_batch_size(batch_size: int | str, loaded: Any, decode: str = "exact") -> int:
    """``score.batch_size``: a number as given; ``auto``: from the free memory of the model's
    GPU (:func:`choose_batch_size`), or DEFAULT_BATCH without CUDA. Decided once per loaded
    model and decoder (in ``_AUTO``): later shards would see the memory torch's allocator keeps
    cached from the first as used, and batches would shrink for no reason."""
    if batch_size != "auto":
        return int(batch_size)
    if loaded.device.type != "cuda":
        return DEFAULT_BATCH
    key = (id(loaded.model), decode)
    if key not in _AUTO:
        import torch

        free, _ = torch.cuda.mem_get_info(loaded.device)
        # what torch's allocator holds but does not use is free for this process too
        free += torch.cuda.memory_reserved(loaded.device) - torch.cuda.memory_allocated(
            loaded.device)
        h, w = loaded.image_size
        extra = GPU_DECODE_BYTES if decode == "gpu" else 3 * h * w * 4
        _AUTO.clear()  # one model per actor
        _AUTO[key] = choose_batch_size(free, probe_bytes_per_image(loaded) + extra)
        log.info("score.batch_size auto: %d (%.1f GB free on %s)", _AUTO[key], free / 1e9,
                 loaded.device)
    return _AUTO[key]


def choose_batch_size(free_bytes: int, per_image: float, cap: int = AUTO_CAP) -> int:
    """The largest power of two (1..cap) whose images fit in MEMORY_SHARE of ``free_bytes``."""
    n = int(free_bytes * MEMORY_SHARE // max(per_image, 1.0))
    return 1 if n < 1 else min(cap, 1 << (n.bit_length() - 1))


def probe_bytes_per_image(loaded: Any, probe: int = 4) -> float:
    """Peak CUDA memory of encoding ``probe`` blank images at the loaded precision, per image:
    the real architecture's activations, where a formula would have to know every one (and
    the fixed workspaces counted in make it an overestimate, which is the safe side)."""
    import torch

    from curate.models.encode import autocast

    dev = loaded.device
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    x = torch.zeros((probe, 3, *loaded.image_size), device=dev)
    with torch.inference_mode(), autocast(loaded):
        loaded.model.encode_image(x)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    del x
    return max(peak, 1) / probe
