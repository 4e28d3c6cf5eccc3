"""Benchmark: open_clip's val preprocess vs ``decode: fast`` (and ``gpu``) on the same JPEGs.

Alternates them over the same images (``--rounds`` times each, best round kept), then
encodes the batches with one random-weight ViT-B-32 and reports the minimum cosine between
the embeddings of each image. exact and fast run on one core. ``gpu`` decodes the whole set
in one ``gpu_batch`` call on CUDA when there is one; without CUDA that same code runs on the
CPU, one thread (its line says which). The last line reads:
``preprocess: <a> img/s per core exact, <b> img/s per core fast, speedup <x>x, min cosine <c>``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--images", default=str(DEFAULT), help="folder of JPEGs (recursive)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="ViT-B-32")
    args = ap.parse_args()
    import open_clip
    import torch
    from PIL import Image

    from curate.models.fast_preprocess import affine, fast_into
    from curate.models.gpu_decode import default_device, gpu_batch
    from curate.models.images import decode_image

    torch.set_num_threads(1)
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in
                   (".jpg", ".jpeg"))
    if not files:
        print(f"no JPEGs under {args.images}")
        return 2
    data = [p.read_bytes() for p in files]
    model, _, pre = open_clip.create_model_and_transforms(args.model, pretrained=None)
    pre = open_clip.image_transform(args.size, is_train=False) if args.size != 224 else pre
    scale, shift = affine(pre)
    sizes = [Image.open(p).size for p in files[:5]]
    print(f"{len(files)} JPEGs from {args.images} (e.g. {sizes}), size {args.size}, "
          f"{os.uname().machine}, one thread")
    device = default_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gpu_batch(data, pre, device=device)  # warm-up: nvJPEG and CUDA kernels load lazily
    exact_rate = fast_rate = gpu_rate = 0.0
    for _ in range(args.rounds):
        t = time.perf_counter()
        ex = torch.stack([pre(decode_image(d)) for d in data])
        exact_rate = max(exact_rate, len(data) / (time.perf_counter() - t))
        t = time.perf_counter()
        fa = torch.empty((len(data), 3, args.size, args.size))
        for i, d in enumerate(data):
            fast_into(fa[i], d, args.size, scale, shift)
        fast_rate = max(fast_rate, len(data) / (time.perf_counter() - t))
        sync()
        t = time.perf_counter()
        ga = gpu_batch(data, pre, device=device)[0]
        sync()
        gpu_rate = max(gpu_rate, len(data) / (time.perf_counter() - t))
    ga = ga.cpu()
    cosines = {}
    with torch.no_grad():
        a = model.encode_image(ex) if args.size == 224 else None
        for name, x in (("fast", fa), ("gpu", ga)):
            cosines[name] = (torch.nn.functional.cosine_similarity(
                a, model.encode_image(x)).min().item() if a is not None else float("nan"))
    cos = cosines["fast"]
    for name, x in (("fast", fa), ("gpu", ga)):
        diff = np.abs(ex.numpy() - x.numpy())
        print(f"{name} tensor difference: mean {diff.mean():.5f}, max {diff.max():.3f} "
              "(normalised units)")
    where = ("CUDA, " + torch.cuda.get_device_name() if device.type == "cuda" else
             "no CUDA here: the same code on the CPU, one thread")
    print(f"gpu decode ({where}): {gpu_rate:.0f} img/s, {gpu_rate / exact_rate:.2f}x exact "
          f"per core, min cosine {cosines['gpu']:.5f}")
    print(f"preprocess: {exact_rate:.0f} img/s per core exact, {fast_rate:.0f} img/s per core "
          f"fast, speedup {fast_rate / exact_rate:.2f}x, min cosine {cos:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
