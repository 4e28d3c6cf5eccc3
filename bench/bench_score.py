"""Score: the curate score stage vs a bare open_clip loop, same model/batch/images, one run.

The bare loop is what a user would write: for each batch, PIL-decode and open_clip-preprocess
the images, encode images and captions, normalise, dot. Ours is the whole stage through the
engine (Ray actors, threaded decode, Parquet output), timed end to end including actor
start-up and model load, and also its steady-state rate (from the shard timings).

    python bench/bench_score.py [--model ViT-B-32] [--n 600] [--batch 64]
    python bench/bench_score.py --device cuda --precision fp16 --n 20000 --batch 512  (GPU)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time

for _k, _v in (("NO_ALBUMENTATIONS_UPDATE", "1"), ("WANDB_MODE", "disabled"),
               ("RAY_AUTH_MODE", "disabled"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _common import machine, peak_rss_mb  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def make_images(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, 560, 2)
            d.ellipse((x, y, x + 80, y + 60), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bare_loop(images, captions, ckpt, args) -> float:
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(
        args.model, pretrained=ckpt, device=args.device)
    model.eval()
    tok = open_clip.get_tokenizer(args.model)
    t = time.perf_counter()
    amp = (torch.autocast("cuda", dtype=torch.float16) if args.precision == "fp16"
           else torch.autocast("cpu", enabled=False))
    with torch.inference_mode(), amp:
        for i in range(0, len(images), args.batch):
            x = torch.stack([preprocess(Image.open(io.BytesIO(b)))
                             for b in images[i:i + args.batch]]).to(args.device)
            ie = model.encode_image(x)
            te = model.encode_text(tok(captions[i:i + args.batch]).to(args.device))
            ie = ie / ie.norm(dim=-1, keepdim=True)
            te = te / te.norm(dim=-1, keepdim=True)
            (ie * te).sum(-1).float().cpu().numpy()
    return time.perf_counter() - t


def model_only(images, ckpt, args) -> float:
    """Encode pre-decoded batches only: the ceiling any pipeline can reach."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(
        args.model, pretrained=ckpt, device=args.device)
    model.eval()
    x = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images[:args.batch]])
    x = x.to(args.device)
    steps = max(1, len(images) // args.batch)
    amp = (torch.autocast("cuda", dtype=torch.float16) if args.precision == "fp16"
           else torch.autocast("cpu", enabled=False))
    with torch.inference_mode(), amp:
        model.encode_image(x)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            model.encode_image(x)
        if args.device == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t) / (steps * args.batch) * len(images)


def ours(pool: str, work: str, ckpt: str, args) -> tuple[float, float]:
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline as parse_config

    out = f"{work}/run"
    cfg = parse_config({
        "stages": ["score"], "pool": {"shard_size": args.shard_size},
        "score": {"model": args.model, "pretrained": ckpt, "batch_size": args.batch,
                  "device": args.device, "precision": args.precision},
        "run": {"max_retries": 0}})
    t = time.perf_counter()
    run_pipeline(cfg, out, pool=pool)
    dt = time.perf_counter() - t
    secs = []
    for f in sorted(os.listdir(f"{out}/scores")):
        md = pq.read_schema(f"{out}/scores/{f}").metadata[b"curate"]
        secs.append(json.loads(md)["counts"]["seconds"])
    shutil.rmtree(out)
    return dt, sum(secs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()

    import open_clip
    import torch

    from curate.core import engine

    work = tempfile.mkdtemp(prefix="bench-score-")
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms(args.model, pretrained=None)
    ckpt = f"{work}/model.pt"  # random weights saved once: both sides load the same
    torch.save(model.state_dict(), ckpt)
    del model
    images = make_images(args.n)
    captions = [f"a photo of {i} coloured ellipses on a plain background" for i in range(args.n)]
    pool = f"{work}/pool.parquet"
    pq.write_table(pa.table({"caption": captions, "image": images}), pool)
    engine.init()
    t_bare = bare_loop(images, captions, ckpt, args)
    t_ours, t_ours_work = ours(pool, work, ckpt, args)
    t_model = model_only(images, ckpt, args)
    actors = max(1, engine.cluster_gpus()) if args.device == "cuda" else None
    if actors is None:
        from curate.stages.score import ScoreConfig  # the CPU actor count the stage uses

        actors = ScoreConfig().num_actors or max(1, min(engine.cluster_cpus(), 4) // 2)
    shutil.rmtree(work, ignore_errors=True)
    n = args.n
    print(f"machine: {machine()}; {args.model} random weights, {args.device} {args.precision}, "
          f"{n} JPEGs 640x480, batch {args.batch}")
    print(f"bare open_clip loop:           {n / t_bare:8.1f} img/s ({t_bare:.1f}s)")
    print(f"curate score (end to end):     {n / t_ours:8.1f} img/s ({t_ours:.1f}s, "
          "incl. Ray actor start + model load)")
    print(f"curate score (steady state):   {n * actors / t_ours_work:8.1f} img/s "
          f"({actors} actors, shard seconds summed {t_ours_work:.1f}s)")
    print(f"model only (no decode):        {n / t_model:8.1f} img/s")
    print(f"ratio ours/bare: end to end {t_bare / t_ours:.2f}, steady "
          f"{(n * actors / t_ours_work) / (n / t_bare):.2f}; peak RSS driver "
          f"{peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
