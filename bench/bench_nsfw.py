"""Benchmark: the nsfw stage's scoring rate vs a bare NumPy loop, and its memory vs pool size.

    python bench/bench_nsfw.py [--pairs 200000] [--reps 3] [--shard-size 10000]
                               [--model vit_l_14] [--sizes 100000,1000000]

Embeddings: random unit vectors of the head's width (768 for ``vit_l_14``), float32, as a
pool's ``image_emb`` column (``fixed_size_list<float>``), in shards of ``--shard-size``.

- bare: per shard, on a NumPy matrix made beforehand, only the math: L2-normalise, LAION's
  normalisation, the head's layers with ReLU, sigmoid, and clip-retrieval's violence argmax;
- stage: ``NsfwStage.process`` on the same shards as Arrow tables, i.e. what a worker does
  after reading its shard: the embedding column to a matrix, the same math, the output table
  (uid, punsafe, violent, decisions) with ``max_punsafe`` set, so details are built too.

punsafe and the flag must equal the bare loop's (checked). Each figure is the best of
``--reps`` rounds that run both in turn. Memory: for each of ``--sizes`` a fresh process runs
the stage's whole shard step (``run_inline``: read the pool shard, process, write
``nsfw/part-*.parquet``) over a pool of that many pairs in shards of ``--shard-size`` (the
shard files are hard links of one file: the same bytes per shard, no 3 GB to generate), and
reports its peak RSS: flat when the work is per shard.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine, peak_rss_mb  # noqa: E402

from curate.algorithms.heads import NORM_EPS  # noqa: E402
from curate.models.head import NSFW, load_head, load_prompts, nsfw_path  # noqa: E402
from curate.stages.base import StageSpec  # noqa: E402
from curate.stages.nsfw import NsfwStage  # noqa: E402
from curate.stages.registry import parse_pipeline  # noqa: E402
from curate.stages.runtime import build, run_inline  # noqa: E402


def shard_table(lo: int, n: int, d: int, seed: int) -> pa.Table:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return pa.table({"uid": [f"{lo + i:032x}" for i in range(n)],
                     "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)})


def make_stage(run: Path, model: str, shard_size: int, max_punsafe: float | None = 0.5
               ) -> NsfwStage:
    cfg = parse_pipeline({"stages": ["nsfw"], "pool": {"shard_size": shard_size},
                          "nsfw": {"model": model, "max_punsafe": max_punsafe}})
    spec = StageSpec("nsfw", str(run), cfg.dump(), cfg.fingerprints()["nsfw"])
    return build(spec, NsfwStage)


def bare(xs: list[np.ndarray], head, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, var = head.norm
    scale = np.sqrt(var) + np.float32(NORM_EPS)
    ps, vs = [], []
    for x in xs:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        n[n == 0] = 1
        x = x / n
        h = (x - mean) / scale
        for i, (w, b) in enumerate(head):
            h = h @ w.T + b
            if i < len(head) - 1:
                h = np.maximum(h, 0)
        ps.append((1 / (1 + np.exp(-h[:, 0]))).astype(np.float32))
        vs.append(np.argmax(np.einsum("ij,kj->ik", x, prompts), axis=1) == 1)
    return np.concatenate(ps), np.concatenate(vs)


def hwm_mb() -> float:
    """This process's own peak RSS: VmHWM (a child's ru_maxrss starts at its parent's on
    Linux, so a fresh process after a big parent would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def child(pairs: int, shard_size: int, model: str) -> None:
    """One pool size: the shard step over ``pairs`` pairs; prints peak RSS as JSON."""
    d = NSFW[model][2]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        (run / "pool").mkdir(parents=True)
        first = run / "pool" / "part-00000.parquet"
        pq.write_table(shard_table(0, shard_size, d, 0), first)
        shards = [first.name]
        for j in range(1, -(-pairs // shard_size)):
            os.link(first, run / "pool" / f"part-{j:05d}.parquet")
            shards.append(f"part-{j:05d}.parquet")
        rss0 = hwm_mb()
        t0 = time.perf_counter()
        run_inline(make_stage(run, model, shard_size), shards)
        dt = time.perf_counter() - t0
        out = len(list((run / "nsfw").glob("part-*.parquet")))
    print(json.dumps({"pairs": len(shards) * shard_size, "shards": out, "seconds": dt,
                      "rss_before_mb": rss0, "peak_rss_mb": hwm_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--model", default="vit_l_14", choices=sorted(NSFW))
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.shard_size, args.model)
        return

    mem = []
    for size in (int(s) for s in args.sizes.split(",")):
        res = subprocess.run([sys.executable, __file__, "--child", str(size), "--shard-size",
                              str(args.shard_size), "--model", args.model],
                             capture_output=True, text=True, check=True)
        mem.append(json.loads(res.stdout.strip().splitlines()[-1]))

    d = NSFW[args.model][2]
    head, prompts = load_head(str(nsfw_path(args.model))), load_prompts(args.model)
    tables = [shard_table(lo, min(args.shard_size, args.pairs - lo), d, lo)
              for lo in range(0, args.pairs, args.shard_size)]
    xs = [t["image_emb"].combine_chunks().flatten().to_numpy().reshape(-1, d) for t in tables]
    with tempfile.TemporaryDirectory() as tmp:
        stage = make_stage(Path(tmp), args.model, args.shard_size)
        stage.process("part-00000.parquet", tables[0])  # loads the head once (a worker's setup)

        def staged() -> tuple[np.ndarray, np.ndarray]:
            outs = [stage.process(f"part-{j:05d}.parquet", t) for j, t in enumerate(tables)]
            return (np.concatenate([o["punsafe"].to_numpy() for o in outs]),
                    np.concatenate([o["violent"].to_numpy(zero_copy_only=False) for o in outs]))

        t_bare = t_stage = float("inf")
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ref = bare(xs, head, prompts)
            t_bare = min(t_bare, time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = staged()
            t_stage = min(t_stage, time.perf_counter() - t0)
            np.testing.assert_allclose(got[0], ref[0], atol=1e-6, rtol=0)
            assert (got[1] == ref[1]).all(), "violence flags differ from the bare loop"
    rss = hwm_mb()

    n = args.pairs
    print(f"\n{n:,} pairs, {args.model} ({d}-d), shards of {args.shard_size:,}; {machine()}; "
          f"best of {args.reps}; punsafe ({head.norm is not None and 'norm + '}"
          f"{len(head)} layers) + violence flag\n")
    print("| what | pairs/s | vs bare |")
    print("|---|---:|---:|")
    print(f"| bare NumPy loop (the math only) | {n / t_bare:,.0f} | 1.00x |")
    print(f"| nsfw stage: process() per shard | {n / t_stage:,.0f} | {t_bare / t_stage:.2f}x |")
    print(f"\npeak RSS of this process: {rss:,.0f} MB (embeddings held in memory twice: "
          f"{2 * n * d * 4 / 2**20:,.0f} MB)\n")
    print("| pool pairs | shards | shard step (read + process + write) pairs/s | "
          "RSS before the step | peak RSS (fresh process) |")
    print("|---:|---:|---:|---:|---:|")
    for m in mem:
        print(f"| {m['pairs']:,} | {m['shards']} | {m['pairs'] / m['seconds']:,.0f} | "
              f"{m['rss_before_mb']:,.0f} MB | {m['peak_rss_mb']:,.0f} MB |")


if __name__ == "__main__":
    main()
