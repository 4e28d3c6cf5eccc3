"""How a run of N pairs lays out on a Ray cluster, stage by stage, from measured rates.

Prints, per stage of a text-first-then-images pipeline (ingest, language, match, balance,
download, score, nsfw, prune, report): the pairs it sees, its shard-steps, CPU core-hours
and GPU hours, the hours its work takes spread over the cluster, the driver's serial hours
for its shard-steps (today's and at the goal), and the bytes it writes; then the run's
totals, run.json's size and the driver's memory. docs/SCALE.md explains the model.

Every rate is a named constant below citing the bench/RESULTS.md line it comes from. They
were measured on a 2-core x86_64 container, per core; a 64-core node is taken as 64 such
cores, which is optimistic where a stage is bound by memory bandwidth, disk or network.
What no bench here measured is an *assumption*, named so, and settable from the command
line: the share balance keeps, the share of downloads that succeed, and a GPU's encode rate
(no GPU was lent to the tasks that measured the rest).

    .venv/bin/python bench/scale_table.py --pairs 10e9 --nodes 100 --cpus-per-node 64 \\
        --gpus-per-node 8
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

# --------------------------------------------------------------------------- measured rates
# pairs (or images) per second per CPU core for a whole shard step (read, work, write),
# each from bench/RESULTS.md (2 cores; a 2-core figure is halved)

#: "ingest with duplicate detection, 4M rows, 5% duplicates | ... | **769k rows/s** (5.2 s)"
INGEST_PER_CORE = 769_000 / 2
#: "language ID (issue 11) | ... whole shard step (read, predict, write) 120.1k (0.96x)"
LANGUAGE_PER_CORE = 120_100
#: "Where the 4M text-first run's time goes now": "| match | 9.9 (was 12.9) |" s wall, 4M
#: pairs, 2 workers
MATCH_PER_CORE = 4_000_000 / (9.9 * 2)
#: same table: "| balance | 5.1 (was 6.1) |" (its count step and its shard step)
BALANCE_PER_CORE = 4_000_000 / (5.1 * 2)
#: same table: "| report | 3.7 (was 7.3) |"
REPORT_PER_CORE = 4_000_000 / (3.7 * 2)
#: "download | marginal rate between the two runs above (fixed costs removed) | ~1,960
#: img/s" on 2 cores, loopback (CPU-bound: fetch, header checks, Parquet): the CPU cost of
#: a download, not the network's or the remote hosts' pace
DOWNLOAD_PER_CORE = 1_960 / 2
#: "`score.decode: fast` after issue 12's rework | ... fast 771-804 img/s" per core: the
#: CPU side of scoring (decode + preprocess) that feeds a GPU
SCORE_DECODE_PER_CORE = 790
#: "score | `bench_score.py --n 300 --batch 50` | steady 12.4 img/s" (ViT-B-32 fp32 on 2 CPU
#: cores): scoring without a GPU
SCORE_CPU_PER_CORE = 12.4 / 2
#: "nsfw shard step (read + process + write), fresh process per pool size | ... 40,465 at
#: 1M" (one process)
NSFW_PER_CORE = 40_465
#: "embeddings through score (top_fraction 0.5) + prune, 64-d | ... | 2M in 40.0 s (50k
#: pairs/s)" on 2 cores; 64-d embeddings: a 512-d pool's k-means assignment and SemDeDup
#: cost more per pair
PRUNE_PER_CORE = 2_000_000 / (40.0 * 2)

# --------------------------------------------------------------------------- measured sizes
#: bytes per pair of the shard files, 100k-pair shards (bench_driver, "Driver and worker
#: overhead" section: real captions, url + caption + uid; match: uid + entry_ids; balance:
#: uid, keep_prob and the decision columns)
POOL_BYTES, MATCH_BYTES, BALANCE_BYTES = 44.1, 42.4, 17.9
#: "image bytes at download.resize 256 (keep_ratio) q95, 19 real photos | 37.3 KB"
IMAGE_BYTES = 37.3 * 1024
#: score's output per pair: image_emb + text_emb as float16 (2 x 512 x 2 bytes at ViT-B/32's
#: 512-d; zstd barely compresses them) + uid, clip_score and decisions (computed, not measured)
SCORE_BYTES = 2 * 512 * 2 + 40
#: a stage writing a uid, a number or two and its decisions per pair (nsfw, prune)
SMALL_BYTES = BALANCE_BYTES + 8

# --------------------------------------------------------------------------- the driver
#: the driver process's CPU per shard-step (serial, however large the cluster): the
#: "driver process CPU per shard-step" row of "Driver and worker overhead at many shards"
#: in RESULTS.md, the issue's figure on a quieter machine (1.6 ms; re-measured 1.9-2.6 ms
#: less Ray's idle burn at load 13-40)
DRIVER_MS_NOW = 1.6
#: the goal of issue 24 part 9
DRIVER_MS_GOAL = 0.5
#: worker CPU per shard-step beyond the stage's per-pair work, 250-pair shards (same
#: section: the issue's 16 ms; "worker side in-process": 13.9 ms, most of it the matcher's
#: fixed ~20-26 ms per match call); an upper bound at 50,000-pair shards
WORKER_OVERHEAD_MS = 16.0
#: the engine waits for results one at a time: each ``ray.wait(refs, num_returns=1)`` plus
#: its scans of the running set cost 1.27 + 2.25 ms with 6,400 refs in flight at load
#: 13-22 (same section, "per result, with N tasks in flight"), ~1.1 + 0.6 ms on a quieter
#: run: microseconds per ref in flight, per result
WAIT_US_PER_REF = 0.3
#: run.json: fixed part, and bytes per pool shard (``pool.inputs[].shards`` lists every
#: shard's name; 3.7 KB at 10 shards, 128.4 KB at 4,000: same section)
RUN_JSON_BASE, RUN_JSON_PER_SHARD = 3_700, 31
#: the driver's memory per shard while a shard step runs: one Outcome (counts, timings)
#: per shard, kept until the step's fold (same section: 1,026-1,063 bytes, deep size)
DRIVER_BYTES_PER_SHARD = 1_100

# --------------------------------------------------------------------------- assumptions
#: MetaCLIP's 400M set from a 1.6B pool (Xu et al. 2023): a quarter. Not measured here.
BALANCE_KEEP = 0.25
#: share of URLs that download (LAION-era pools: roughly 0.5-0.7). Not measured here.
DOWNLOAD_OK = 0.6
#: images per second one GPU encodes (ViT-B/32, fp16). Not measured: no GPU was lent.
GPU_ENCODE_IMG_S = 5_000


#: ingest's work items are not per shard: a read task per ~256k-row piece, a keys task per
#: ~1M staged rows, a write task per 2**20-row group (and 64 dedup partitions)
#: (docs/ARCHITECTURE.md §10, curate/stages/_pool_dedup.py)
INGEST_ITEMS_PER_PAIR = 1 / 262_144 + 1 / 1_000_000 + 1 / 2**20


@dataclass
class Stage:
    name: str
    per_core: float | None  # pairs/s per core; None: the GPU stage
    share: float  # of the pool's pairs that reach it
    steps: float  # work items per pool shard (its shard step + its global steps' per-shard maps)
    bytes_per_pair: float  # what it writes per pair it sees
    note: str = ""


def stages(a: argparse.Namespace) -> list[Stage]:
    kept = a.balance_keep
    imgs = kept * a.download_ok
    return [
        Stage("ingest", INGEST_PER_CORE, 1.0, a.shard_size * INGEST_ITEMS_PER_PAIR, POOL_BYTES,
              "tasks per piece, key batch, partition, group"),
        Stage("language", LANGUAGE_PER_CORE, 1.0, 1, 30, "fastText lid.176"),
        Stage("match", MATCH_PER_CORE, 1.0, 1, MATCH_BYTES, "default vocabulary"),
        Stage("balance", BALANCE_PER_CORE, 1.0, 2, BALANCE_BYTES, "count + shards"),
        Stage("download", DOWNLOAD_PER_CORE, kept, 1, IMAGE_BYTES * a.download_ok,
              "CPU only; the network sets the pace"),
        Stage("score", None, imgs, 1, SCORE_BYTES,
              "GPU; CPU decodes" if a.gpus_per_node else "no GPU: ViT-B/32 fp32 on CPU"),
        Stage("nsfw", NSFW_PER_CORE, imgs, 1, SMALL_BYTES, "head on embeddings"),
        Stage("prune", PRUNE_PER_CORE, imgs, 4, SMALL_BYTES, "count, sample, assign, shards"),
        Stage("report", REPORT_PER_CORE, 1.0, 1, 0, "one count map per shard"),
    ]


def table(a: argparse.Namespace) -> None:
    cores, gpus = a.nodes * a.cpus_per_node, a.nodes * a.gpus_per_node
    shards = math.ceil(a.pairs / a.shard_size)
    gpu_rate = min(a.gpu_img_s, SCORE_DECODE_PER_CORE * a.cpus_per_node / max(a.gpus_per_node, 1))
    print(f"{a.pairs:,.0f} pairs in shards of {a.shard_size:,} = {shards:,} shards; "
          f"{a.nodes} nodes x {a.cpus_per_node} CPUs x {a.gpus_per_node} GPUs = {cores:,} "
          f"cores, {gpus:,} GPUs; balance keeps {a.balance_keep:.0%} (assumed), downloads "
          f"succeed {a.download_ok:.0%} (assumed), " + (
              f"a GPU scores {gpu_rate:,.0f} img/s (min of {a.gpu_img_s:,} assumed encode, "
              f"{SCORE_DECODE_PER_CORE} x {a.cpus_per_node // max(a.gpus_per_node, 1)} "
              "cores' decode)\n" if gpus else
              f"score on CPU at {SCORE_CPU_PER_CORE} img/s per core\n"))
    print("| stage | pairs in | shard-steps | CPU core-h | GPU h | work min on the cluster | "
          f"driver min now ({DRIVER_MS_NOW} ms) | driver min at the goal ({DRIVER_MS_GOAL} ms)"
          " | wait-scan min | writes TB | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    tot = dict.fromkeys(("steps", "core_h", "gpu_h", "work_h", "now_h", "goal_h", "scan_h",
                         "tb", "wall_now", "wall_goal"), 0.0)
    for s in stages(a):
        pairs = a.pairs * s.share
        steps = round(shards * s.steps)
        overhead_h = steps * WORKER_OVERHEAD_MS / 1e3 / 3600  # each task's fixed cost
        in_flight = min(cores, shards)  # one CPU per task: every core busy
        if s.per_core is None and gpus:  # GPU actors, fed by the CPUs' decode
            gpu_h = pairs / gpu_rate / 3600
            core_h = pairs / SCORE_DECODE_PER_CORE / 3600 + overhead_h
            work_h, in_flight = max(gpu_h / gpus, core_h / cores), min(gpus, shards)
        else:
            rate = SCORE_CPU_PER_CORE if s.per_core is None else s.per_core
            gpu_h, core_h = 0.0, pairs / rate / 3600 + overhead_h
            work_h = core_h / cores
        now_h, goal_h = (steps * DRIVER_MS_NOW / 1e3 / 3600,
                         steps * DRIVER_MS_GOAL / 1e3 / 3600)
        scan_h = steps * in_flight * WAIT_US_PER_REF / 1e6 / 3600
        tb = pairs * s.bytes_per_pair / 1e12
        for k, v in (("steps", steps), ("core_h", core_h), ("gpu_h", gpu_h),
                     ("work_h", work_h), ("now_h", now_h), ("goal_h", goal_h),
                     ("scan_h", scan_h), ("tb", tb),
                     ("wall_now", max(work_h, now_h + scan_h)),
                     ("wall_goal", max(work_h, goal_h))):
            tot[k] += v
        print(f"| {s.name} | {pairs:,.0f} | {steps:,} | {core_h:,.0f} | {gpu_h:,.0f} | "
              f"{work_h * 60:,.1f} | {now_h * 60:.1f} | {goal_h * 60:.1f} | {scan_h * 60:,.1f} | "
              f"{tb:,.2f} | {s.note} |")
    print(f"| **total** | | {tot['steps']:,.0f} | {tot['core_h']:,.0f} | {tot['gpu_h']:,.0f} | "
          f"{tot['work_h'] * 60:,.0f} | {tot['now_h'] * 60:.0f} | {tot['goal_h'] * 60:.0f} | "
          f"{tot['scan_h'] * 60:,.0f} | {tot['tb']:,.1f} | |")
    print(f"\nrun wall, each stage the slower of its work and its driver: today "
          f"{tot['wall_now']:,.1f} h (the driver's loop and the engine's wait scan as they "
          f"are), {tot['wall_goal']:,.1f} h at the goal (driver {DRIVER_MS_GOAL} ms per "
          "shard-step, no per-result scan of what runs)")
    run_json = RUN_JSON_BASE + RUN_JSON_PER_SHARD * shards
    print(f"run.json ~{run_json / 1e6:.1f} MB (every pool shard's name under pool.inputs); "
          f"driver memory for one step's outcomes ~{shards * DRIVER_BYTES_PER_SHARD / 1e6:,.0f}"
          f" MB above the 0.33 GB it peaks at with 4,000 shards; a wait scan costs "
          f"{min(cores, shards) * WAIT_US_PER_REF / 1e3:.1f}"
          f" ms per result with {min(cores, shards):,} tasks in flight")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pairs", type=float, default=10e9)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--cpus-per-node", type=int, default=64)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=50_000)
    ap.add_argument("--balance-keep", type=float, default=BALANCE_KEEP)
    ap.add_argument("--download-ok", type=float, default=DOWNLOAD_OK)
    ap.add_argument("--gpu-img-s", type=int, default=GPU_ENCODE_IMG_S)
    table(ap.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
