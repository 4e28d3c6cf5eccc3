"""Every GPU path of curate, measured once, as one Markdown table (run by bench/gpu_check.sh).

Why one script: the GPU paths (score actors with fp16 autocast, FAISS GPU k-means, k-means
tasks on GPU workers) only run where a GPU is, which is rarely where curate is developed;
this is the check to run when one is lent, within 8 minutes on one H100/H200, offline.

Parts, each through curate's real code paths (random weights: no download):

- ``score``: the score stage (``run_pipeline``, one GPU actor, fp16) on JPEGs 640x480, per
  model and ``score.decode``; its steady-state img/s from the shards' process seconds,
  beside the model-only img/s on pre-made tensors (the ceiling); and ``decode: gpu``'s
  pixels against open_clip's exact preprocess (nvJPEG is not libjpeg-turbo: the one
  accuracy figure that needs a GPU), with its decode-only img/s.
- ``kmeans``: ``train_kmeans`` on n x d float32, k centroids, GPU then CPU, same seed and
  iterations: seconds, objective, share of equal assignments.
- ``pipeline``: the prune stage on an n-embedding pool (sample, train, assign): where its
  train and assign steps ran (run.json: device, GPUs Ray gave) and how long they took.

``--smoke`` runs every part tiny on CPU (a check of this script, not a measurement).

    python bench/gpu_check.py --out bench/gpu_check.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

for _k, _v in (("NO_ALBUMENTATIONS_UPDATE", "1"), ("WANDB_MODE", "disabled"),
               ("RAY_AUTH_MODE", "disabled"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []  # (part, what, result, note)


def row(part: str, what: str, result: str, note: str = "") -> None:
    ROWS.append((part, what, result, note))
    print(f"| {part} | {what} | {result} | {note} |", flush=True)


def table(header: str) -> str:
    lines = [header, "", "| part | what | result | note |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ROWS]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- score
def jpegs(n: int) -> list[bytes]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for _ in range(min(n, 256)):  # 256 distinct images, repeated: decode cost is the same
        img = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, 560, 2)
            d.ellipse((x, y, x + 80, y + 60), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(n)]


def model_only(model_name: str, ckpt: str, device: str, batch: int, steps: int) -> float:
    """img/s of ``encode_image`` on one pre-made batch (no decode): the ceiling."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=ckpt,
                                                                 device=device)
    model.eval()
    size = preprocess.transforms[0].size
    size = size if isinstance(size, int) else size[0]
    x = torch.randn(batch, 3, size, size, device=device)
    amp = (torch.autocast("cuda", dtype=torch.float16) if device == "cuda"
           else torch.autocast("cpu", enabled=False))
    with torch.inference_mode(), amp:
        model.encode_image(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            model.encode_image(x)
        if device == "cuda":
            torch.cuda.synchronize()
    dt_ = time.perf_counter() - t
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return steps * batch / dt_


def score_stage(pool: str, work: str, model_name: str, ckpt: str, decode: str,
                device: str, batch: int, shard_size: int) -> tuple[float, int]:
    """Steady-state img/s of the score stage (shards' process seconds, one actor per GPU)."""
    from curate.core import engine
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline

    out = f"{work}/run-{model_name}-{decode}"
    cfg = parse_pipeline({
        "stages": ["score"], "pool": {"shard_size": shard_size},
        "score": {"model": model_name, "pretrained": ckpt, "batch_size": batch,
                  "device": device, "precision": "fp16" if device == "cuda" else "fp32",
                  "decode": decode, "pool_score_column": None},
        "run": {"max_retries": 0}}, "gpu_check")
    run_pipeline(cfg, out, pool=pool)
    n, secs = 0, 0.0
    for f in sorted(os.listdir(f"{out}/scores")):
        counts = json.loads(pq.read_schema(f"{out}/scores/{f}").metadata[b"curate"])["counts"]
        n, secs = n + counts["rows_in"], secs + counts["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    actors = max(1, engine.cluster_gpus()) if device == "cuda" else 1
    return n * actors / secs, actors


def decode_agreement(args) -> None:
    """``decode: gpu`` on the device against open_clip's exact preprocess: tensor difference,
    minimum cosine of random ViT-B-32 embeddings, and decode-only img/s (one call per batch)."""
    import open_clip
    import torch
    from bench_preprocess import DEFAULT as REAL  # real photos where this checkout has them

    from curate.models.gpu_decode import gpu_batch
    from curate.models.images import decode_image

    real = sorted(REAL.rglob("*.jpg")) if REAL.is_dir() else []
    data = [p.read_bytes() for p in real] or jpegs(64)
    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    got, ok, _ = gpu_batch(data, pre, device=args.device)  # also the warm-up
    got = got.cpu()
    exact = torch.stack([pre(decode_image(d)) for d in data])[torch.from_numpy(ok)]
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(model.encode_image(exact),
                                                    model.encode_image(got)).min()
    diff = (exact - got).abs()
    batch = [data[i % len(data)] for i in range(args.batch)]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(3):
        gpu_batch(batch, pre, device=args.device)
    sync()
    rate = 3 * len(batch) / (time.perf_counter() - t)
    row("score", f"gpu decode vs exact ({args.device})", f"min cosine {float(cos):.5f}",
        f"{len(data)} {'real photos' if real else 'drawn 640x480 JPEGs'}, random ViT-B-32; "
        f"tensor diff mean {float(diff.mean()):.4f}, max {float(diff.max()):.3f}; decode "
        f"alone {rate:,.0f} img/s (batches of {len(batch)})")


def part_score(args, work: str) -> None:
    import open_clip
    import torch

    try:
        decode_agreement(args)
    except Exception as err:  # noqa: BLE001 - report the cell, run the rest
        row("score", "gpu decode vs exact", "failed", str(err).splitlines()[0][:160])
    images = jpegs(args.images)
    pool = f"{work}/images.parquet"
    pq.write_table(pa.table({"caption": [f"a photo of {i} ellipses" for i in range(len(images))],
                             "image": images}), pool)
    for model_name in args.models:
        torch.manual_seed(0)
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=None)
        ckpt = f"{work}/{model_name}.pt"  # random weights, saved once: both sides load it
        torch.save(model.state_dict(), ckpt)
        del model
        ceiling = model_only(model_name, ckpt, args.device, args.batch, args.model_steps)
        for decode in ("exact", "fast", "gpu"):
            what = f"{model_name} score, decode {decode}"
            try:
                rate, actors = score_stage(pool, work, model_name, ckpt, decode, args.device,
                                           args.batch, args.shard_size)
                row("score", what, f"{rate:,.0f} img/s",
                    f"model only {ceiling:,.0f} img/s; {len(images)} JPEGs 640x480, "
                    f"batch {args.batch}, {actors} actor(s), {args.device}")
            except Exception as err:  # noqa: BLE001 - report the cell, run the rest
                row("score", what, "failed", str(err).splitlines()[0][:160])


# ---------------------------------------------------------------------------- k-means
def blobs(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """n unit vectors around k random centres (cosine ~0.75): CLIP-like, well separated."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 65536):
        lab = rng.integers(0, k, size=min(65536, n - s))
        v = centres[lab] + np.float32(0.9 / np.sqrt(d)) * rng.standard_normal(
            (len(lab), d), dtype=np.float32)
        x[s:s + len(lab)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return x


def part_kmeans(args) -> None:
    from curate.algorithms.kmeans import gpu_count, train_kmeans

    x = blobs(args.kmeans_n, args.kmeans_d, args.kmeans_k)
    per = -(-len(x) // args.kmeans_k)  # every point trains (no subsampling)
    what = f"k-means {len(x):,} x {args.kmeans_d}, k = {args.kmeans_k:,}, {args.niter} iter"
    models = {}
    for use_gpu in ((True, False) if gpu_count() else (False,)):
        t = time.perf_counter()
        m = train_kmeans(x, args.kmeans_k, niter=args.niter, seed=0, use_gpu=use_gpu,
                         max_points_per_centroid=per)
        total = time.perf_counter() - t
        models[m.device] = m
        row("kmeans", f"{what}, {m.device}", f"{total:.1f} s",
            f"Lloyd {m.seconds['lloyd']:.1f} s, seeding {m.seconds['init']:.1f} s, "
            f"objective {m.objective:,.1f}")
    if len(models) == 2:
        g, c = models["gpu"], models["cpu"]
        same = float((g.assign(x, device="cpu")[0] == c.assign(x, device="cpu")[0]).mean())
        rel = abs(g.objective - c.objective) / abs(c.objective)
        row("kmeans", "GPU vs CPU agreement", f"{100 * same:.2f}% equal assignments",
            f"objective differs by {100 * rel:.3f}% (bounds: >= 99.9%, <= 1%)")
    else:
        row("kmeans", f"{what}, gpu", "not run", "FAISS sees no GPU")


# ---------------------------------------------------------------------------- pipeline
def part_pipeline(args, work: str) -> None:
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline

    x = blobs(args.pipeline_n, args.kmeans_d, args.kmeans_k, seed=1).astype(np.float16)
    pool = f"{work}/emb.parquet"
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    pq.write_table(pa.table({"caption": pa.array(np.arange(len(x)).astype(str)),
                             "image_emb": emb}), pool)
    del x, emb
    out = f"{work}/prune-run"
    cfg = parse_pipeline({
        "stages": ["prune"], "pool": {"shard_size": args.pipeline_shard},
        "prune": {"k": args.kmeans_k, "niter": args.niter, "seed": 0},
        "run": {"max_retries": 0}}, "gpu_check")
    t = time.perf_counter()
    run_pipeline(cfg, out, pool=pool)
    total = time.perf_counter() - t
    st = json.loads(Path(out, "run.json").read_text())["stages"]["prune"]
    steps = st["steps"]
    order = [s for s in ("count", "sample", "train", "assign") if s in steps]
    stamp = {s: dt.datetime.fromisoformat(steps[s]["finished"]) for s in order}
    what = f"prune pipeline, {args.pipeline_n:,} embeddings, k = {args.kmeans_k:,}"
    for prev, s in zip(order, order[1:]):
        if s not in ("train", "assign"):
            continue
        info = steps[s]["info"]
        secs = (stamp[s] - stamp[prev]).total_seconds()
        row("pipeline", f"{what}: {s}", f"device {info.get('device')}, GPUs {info.get('gpus')}",
            f"{secs:.0f} s (run.json timestamps, 1 s resolution)")
    row("pipeline", f"{what}: whole stage", f"{total:.1f} s", "incl. ingest of the pool")
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/gpu_check.md")
    ap.add_argument("--parts", default="score,kmeans,pipeline")
    ap.add_argument("--smoke", action="store_true", help="tiny, on CPU: checks the script")
    args = ap.parse_args()
    big = not args.smoke
    args.device = "cuda" if big else "cpu"
    args.models = ["ViT-B-32", "ViT-L-14"] if big else ["ViT-B-32"]
    args.images = 6144 if big else 24
    args.batch = 256 if big else 8
    args.shard_size = 1024 if big else 12
    args.model_steps = 20 if big else 1
    args.kmeans_n, args.kmeans_d = (1_000_000, 512) if big else (3000, 32)
    args.kmeans_k = 1000 if big else 10
    args.niter = 20 if big else 5
    args.pipeline_n = 1_000_000 if big else 2000
    args.pipeline_shard = 50_000 if big else 500

    from _common import machine

    from curate.core import engine

    work = tempfile.mkdtemp(prefix="gpu-check-")
    started = time.perf_counter()
    header = (f"### GPU check ({dt.date.today()}; {machine()}"
              f"{'; SMOKE on CPU, not a measurement' if args.smoke else ''})")
    try:
        engine.init()
        parts = args.parts.split(",")
        for name, fn in (("score", lambda: part_score(args, work)),
                         ("kmeans", lambda: part_kmeans(args)),
                         ("pipeline", lambda: part_pipeline(args, work))):
            if name in parts:
                fn()
                Path(args.out).write_text(table(header))  # partial results survive a kill
        row("total", "wall time", f"{time.perf_counter() - started:.0f} s", "")
    finally:
        Path(args.out).write_text(table(header))
        shutil.rmtree(work, ignore_errors=True)
        engine.shutdown()
    print("\n" + table(header))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
