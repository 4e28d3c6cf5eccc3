"""Benchmark: the faces stage's per-shard rate vs its detector run bare, and memory vs pool size.

    python bench/bench_faces.py [--images 200] [--reps 3] [--shard-size 100]
                                [--sizes 200,2000] [--threads 1]

Images: ``--images`` small JPEGs (160x120 and 200x150), half of them with the test photo's
face (tests/data/faces) pasted at a random place and scale, half drawn shapes, as a pool's
``image`` column in shards of ``--shard-size``. Per core: torch runs ``--threads`` threads.

- bare: ``curate.models.faces.detect`` on the images decoded beforehand (RGB arrays), called
  per ``batch_size`` images as the stage calls it — only the detector;
- stage: ``FacesStage.process`` on the same shards as Arrow tables: PIL decode, the
  detector, normalisation, the output table. Boxes must equal the bare run's (checked);
- facenet-pytorch (when importable, e.g. ``PYTHONPATH=/tmp/facenet``): its
  ``MTCNN(keep_all=True).detect`` on the same decoded images, batched per image size.

Each figure is the best of ``--reps`` rounds; bare and stage alternate which runs first.
Memory: for each of ``--sizes`` a
fresh process runs the stage's whole shard step (``run_inline``: read the pool shard, process,
write ``faces/part-*.parquet``) over a pool of that many images in shards of ``--shard-size``
(hard links of one shard file) and reports its peak RSS: flat when the work is per shard.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402
from bench_nsfw import hwm_mb  # noqa: E402

from curate.core import engine  # noqa: E402
from curate.models.faces import detect, load_nets, set_threads  # noqa: E402
from curate.stages.base import StageSpec  # noqa: E402
from curate.stages.faces import FacesStage, decode_rgb  # noqa: E402
from curate.stages.registry import parse_pipeline  # noqa: E402
from curate.stages.runtime import build, run_inline  # noqa: E402

FACE = ROOT / "tests" / "data" / "faces" / "astronaut_256.jpg"


def image(i: int) -> bytes:
    rng = np.random.default_rng(i)
    size = (160, 120) if i % 4 < 2 else (200, 150)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(40, 220, 3)))
    d = ImageDraw.Draw(img)
    d.rectangle((10, 10, 60, 50), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    d.ellipse((80, 40, 140, 100), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    if i % 2:
        face = Image.open(FACE).convert("RGB").crop((60, 10, 160, 110))
        s = int(rng.integers(40, 100))
        img.paste(face.resize((s, s)), (int(rng.integers(0, size[0] - s)),
                                        int(rng.integers(0, size[1] - s))))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def shard_table(lo: int, n: int) -> pa.Table:
    return pa.table({"uid": [f"{lo + i:032x}" for i in range(n)],
                     "image": pa.array([image(lo + i) for i in range(n)], pa.binary())})


def make_stage(run: Path, shard_size: int) -> FacesStage:
    cfg = parse_pipeline({"stages": ["faces"], "pool": {"shard_size": shard_size},
                          "faces": {"device": "cpu"}})
    spec = StageSpec("faces", str(run), cfg.dump(), cfg.fingerprints()["faces"])
    return build(spec, FacesStage)


def per_core(threads: int) -> None:
    """What a 1-CPU Ray task sees, without starting Ray: ``threads`` CPUs, no GPU."""
    engine.assigned_cpus = lambda: threads
    engine.assigned_gpus = lambda: 0.0
    set_threads(threads)


def child(images: int, shard_size: int, threads: int) -> None:
    per_core(threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        (run / "pool").mkdir(parents=True)
        first = run / "pool" / "part-00000.parquet"
        pq.write_table(shard_table(0, shard_size).append_column(
            "caption", pa.array(["x"] * shard_size)), first)
        shards = [first.name]
        for j in range(1, -(-images // shard_size)):
            os.link(first, run / "pool" / f"part-{j:05d}.parquet")
            shards.append(f"part-{j:05d}.parquet")
        rss0 = hwm_mb()
        t0 = time.perf_counter()
        run_inline(make_stage(run, shard_size), shards)
        dt = time.perf_counter() - t0
        out = len(list((run / "faces").glob("part-*.parquet")))
    print(json.dumps({"images": len(shards) * shard_size, "shards": out, "seconds": dt,
                      "rss_before_mb": rss0, "peak_rss_mb": hwm_mb()}))


def facenet_rate(arrays: list[list[np.ndarray]]) -> float | None:
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        return None
    ref = MTCNN(keep_all=True, device="cpu")
    t0 = time.perf_counter()
    for shard in arrays:
        by_size: dict[tuple, list] = {}
        for a in shard:
            by_size.setdefault(a.shape, []).append(Image.fromarray(a))
        for group in by_size.values():
            for k in range(0, len(group), 32):
                ref.detect(group[k:k + 32])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--sizes", default="200,2000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.shard_size, args.threads)
        return
    mem = []
    for size in (int(s) for s in args.sizes.split(",")):
        res = subprocess.run([sys.executable, __file__, "--child", str(size), "--shard-size",
                              str(args.shard_size), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        mem.append(json.loads(res.stdout.strip().splitlines()[-1]))

    per_core(args.threads)
    tables = [shard_table(lo, min(args.shard_size, args.images - lo))
              for lo in range(0, args.images, args.shard_size)]
    arrays = [[decode_rgb(b) for b in t["image"].to_pylist()] for t in tables]
    nets = load_nets("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        stage = make_stage(Path(tmp), args.shard_size)
        stage.process("part-00000.parquet", tables[0].slice(0, 2))  # load (a worker's setup)
        bs = stage.section.batch_size
        t_bare = t_stage = t_ref = float("inf")
        def bare() -> list:  # the stage's granularity: batch_size decoded images per call
            return [sum((detect(a[k:k + bs], nets, batch_size=bs)
                         for k in range(0, len(a), bs)), []) for a in arrays]

        def staged() -> list:
            return [stage.process(f"part-{j:05d}.parquet", t) for j, t in enumerate(tables)]

        for rep in range(args.reps):  # alternate which goes first (shared cores drift)
            for which in ((bare, staged) if rep % 2 == 0 else (staged, bare)):
                t0 = time.perf_counter()
                res = which()
                dt = time.perf_counter() - t0
                if which is bare:
                    ref, t_bare = res, min(t_bare, dt)
                else:
                    got, t_stage = res, min(t_stage, dt)
            fr = facenet_rate(arrays)
            t_ref = min(t_ref, fr) if fr is not None else t_ref
        faces = 0
        for out, bare, imgs in zip(got, ref, arrays):
            for boxes, (b, _), a in zip(out["face_bboxes"].to_pylist(), bare, imgs):
                h, w = a.shape[:2]
                want = np.clip(b / np.array([w, h, w, h]), 0, 1)
                np.testing.assert_allclose(np.array(boxes).reshape(-1, 4), want, atol=1e-6)
                faces += len(boxes)
    rss = hwm_mb()
    n = args.images
    print(f"\n{n:,} images (160x120 / 200x150 JPEG, half with a pasted face; {faces} boxes), "
          f"shards of {args.shard_size}; torch threads {args.threads}; {machine()}; "
          f"best of {args.reps}\n")
    print("| what | images/s | vs bare |")
    print("|---|---:|---:|")
    print(f"| bare: detect() on decoded arrays | {n / t_bare:,.1f} | 1.00x |")
    print(f"| faces stage: process() per shard (decode + detect + table) | "
          f"{n / t_stage:,.1f} | {t_bare / t_stage:.2f}x |")
    if t_ref < float("inf"):
        print(f"| facenet-pytorch MTCNN.detect (same-size batches of 32) | {n / t_ref:,.1f} | "
              f"{t_bare / t_ref:.2f}x |")
    print(f"\npeak RSS of this process: {rss:,.0f} MB\n")
    print("| pool images | shards | shard step (read + process + write) images/s | "
          "RSS before the step | peak RSS (fresh process) |")
    print("|---:|---:|---:|---:|---:|")
    for m in mem:
        print(f"| {m['images']:,} | {m['shards']} | {m['images'] / m['seconds']:,.1f} | "
              f"{m['rss_before_mb']:,.0f} MB | {m['peak_rss_mb']:,.0f} MB |")


if __name__ == "__main__":
    main()
