"""Match stage scaling with workers: the same captions through `stages: [match]` with 1 and
with N Ray CPUs (a fresh process each, so Ray starts with that many), on the default
vocabulary. Prints captions/s of the stage (shard work, from run.json) and the speed-up.

    python bench/bench_match_scaling.py [--n 200000] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

CHILD = """
import json, sys, time
from curate.core import engine
from curate.stages.registry import parse_pipeline as parse_config
from curate.driver import run_pipeline
engine.init(num_cpus=int(sys.argv[3]))
cfg = parse_config({"stages": ["match"], "pool": {"shard_size": 10000},
                    "match": {"metadata": "default"}})
t = time.perf_counter()
m = run_pipeline(cfg, sys.argv[2], pool=sys.argv[1])
print(json.dumps({"wall": time.perf_counter() - t, "stage": m["stages"]["match"]["seconds"]}))
"""


def captions(n: int) -> list[str]:
    caps: list[str] = []
    if (SHARED / "captions" / "flickr8k_captions.parquet").exists():
        caps += pq.read_table(SHARED / "captions" / "flickr8k_captions.parquet")["caption"] \
            .to_pylist()
        caps += pq.read_table(SHARED / "pools" / "web_alt_text_10k.parquet")["TEXT"].to_pylist()
    else:
        caps = [f"a photo of a dog number {i} on the beach" for i in range(10_000)]
    out = []
    while len(out) < n:
        out += [f"{c} #{len(out) + i}" for i, c in enumerate(caps[: n - len(out)])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-msc-")
    pool = f"{work}/pool.parquet"
    pq.write_table(pa.table({"caption": captions(args.n)}), pool)
    res = {}
    for w in [int(x) for x in args.workers.split(",")]:
        r = subprocess.run([sys.executable, "-c", CHILD, pool, f"{work}/run{w}", str(w)],
                           capture_output=True, text=True, env=dict(os.environ))
        res[w] = json.loads(r.stdout.strip().splitlines()[-1])
    base = min(res)
    print(f"{args.n:,} captions, default vocabulary, shards of 10,000, cores {os.cpu_count()}")
    for w, r in sorted(res.items()):
        print(f"workers {w}: stage {r['stage']:.1f}s ({args.n / r['stage']:,.0f} captions/s), "
              f"wall {r['wall']:.1f}s, speed-up {res[base]['stage'] / r['stage']:.2f}x")


if __name__ == "__main__":
    main()
