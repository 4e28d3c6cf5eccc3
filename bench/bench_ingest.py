"""Ingest throughput and the driver's memory: rows/s and the driver's peak RSS, by pool size.

A synthetic text pool (url + caption, no uid column: ingest derives uids) of ``--rows`` rows
in files of ``--file-rows`` rows, ``--dup-frac`` of them exact copies (same url and caption,
so the same derived uid) of an earlier row anywhere in the pool, in the same file or an
earlier one. A row's content is a pure function of its source number, so the generator
never holds the pool and a copy is just an earlier number.

Each size is ingested in a fresh subprocess (a peak RSS never carries over), after
``engine.init`` (local Ray, ``--cpus``), the way ``curate run`` does. Reported per size:
rows read per second of ``ingest()`` (wall time, duplicate detection included), the
driver's peak RSS (``getrusage``; psutil is not installed) and its growth during ingest
over the baseline after imports and Ray start-up, and what ingest dropped. The driver's
peak should not grow with the pool (duplicate detection runs on Ray workers); its growth
from the smaller to the larger size is the line to read.

``--ingest-from FILE`` measures another version of ``curate/stages/ingest.py`` instead,
e.g. the driver-set one from before duplicates moved to workers:

    .venv/bin/python bench/bench_ingest.py                   # 1M and 4M rows
    .venv/bin/python bench/bench_ingest.py --rows 200000 --keep
    git show e959762:curate/stages/ingest.py > /tmp/ingest_set.py
    .venv/bin/python bench/bench_ingest.py --ingest-from /tmp/ingest_set.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

for _k, _v in (("RAY_AUTH_MODE", "disabled"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
from _common import machine, peak_rss_mb  # noqa: E402

WORDS = np.array("a the dog cat red blue small big photo of on in tree house sky beach kite "
                 "car man woman child running sitting old new black white green".split())


def make_pool(folder: str, rows: int, file_rows: int, dup_frac: float, seed: int) -> int:
    """Write the pool as ``pool-NNN.parquet`` files; returns the number of duplicate rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    chunk = 65_536
    dups = 0
    for f, start in enumerate(range(0, rows, file_rows)):
        n_file = min(file_rows, rows - start)
        path = os.path.join(folder, f"pool-{f:03d}.parquet")
        schema = pa.schema([("url", pa.string()), ("caption", pa.string())])
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for s in range(start, start + n_file, chunk):
                m = min(chunk, start + n_file - s)
                src = np.arange(s, s + m, dtype=np.int64)
                is_dup = rng.random(m) < dup_frac
                is_dup[src == 0] = False
                # a copy of any earlier row of the pool (this file or an earlier one)
                src[is_dup] = (rng.random(int(is_dup.sum())) * src[is_dup]).astype(np.int64)
                dups += int(is_dup.sum())
                ids = pa.array(src).cast(pa.string())
                urls = pc.binary_join_element_wise("https://img.example.com/", ids, ".jpg", "")
                # caption words are a function of the source number only
                h = (src[:, None] * 2654435761 + np.arange(6)[None, :] * 40503) % len(WORDS)
                caps = pc.binary_join_element_wise(*[pa.array(WORDS[h[:, k]]) for k in range(6)],
                                                   ids, " ")
                writer.write_table(pa.table({"url": urls, "caption": caps}, schema=schema))
    return dups


def child(args: argparse.Namespace) -> None:
    """One measurement, in its own process: prints one JSON line."""
    from curate.config import PoolConfig
    from curate.core import engine
    from curate.core.rundir import RunDir
    from curate.stages.ingest import ingest

    if args.ingest_from:
        import importlib.util

        spec = importlib.util.spec_from_file_location("ingest_under_test", args.ingest_from)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        ingest = mod.ingest
    engine.init(args.cpus)
    base = peak_rss_mb()
    rd = RunDir(args.out)
    manifest: dict = {}
    t = time.perf_counter()
    ingest(rd, args.pool, PoolConfig(), manifest, save=rd.save_manifest)
    seconds = time.perf_counter() - t
    pool = manifest["pool"]
    print(json.dumps({"rows_read": pool["rows_read"], "rows": pool["rows"],
                      "duplicates": pool["duplicates"], "shards": pool["shards"],
                      "seconds": seconds, "rows_per_s": pool["rows_read"] / seconds,
                      "driver_peak_mb": peak_rss_mb(), "driver_base_mb": base,
                      "steps": pool.get("dedup", {}).get("seconds", {})}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1000000,4000000",
                    help="pool sizes, comma-separated (default 1M and 4M)")
    ap.add_argument("--file-rows", type=int, default=1_000_000)
    ap.add_argument("--dup-frac", type=float, default=0.05)
    ap.add_argument("--cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the pools and run directories")
    ap.add_argument("--ingest-from", help="measure this ingest.py instead of curate's")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    print(f"machine: {machine()}")
    results = {}
    try:
        for n in [int(x) for x in args.rows.split(",")]:
            pool = os.path.join(work, f"pool-{n}")
            t = time.perf_counter()
            dups = make_pool(pool, n, args.file_rows, args.dup_frac, seed=0)
            print(f"{n:,} rows ({dups:,} planted duplicates) written in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
            cmd = [sys.executable, __file__, "--child", "--pool", pool,
                   "--out", os.path.join(work, f"run-{n}")]
            if args.cpus:
                cmd += ["--cpus", str(args.cpus)]
            if args.ingest_from:
                cmd += ["--ingest-from", os.path.abspath(args.ingest_from)]
            ray_tmp = tempfile.mkdtemp(prefix="bi-", dir="/tmp")  # short: Ray's socket paths
            r = subprocess.run(cmd, capture_output=True, text=True,
                               env=dict(os.environ, CURATE_RAY_TMP=ray_tmp))
            shutil.rmtree(ray_tmp, ignore_errors=True)
            if r.returncode:
                sys.exit(f"ingest of {n:,} rows failed:\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            results[n] = res
            print(f"{n:>10,} rows: {res['rows_per_s']:>9,.0f} rows/s ({res['seconds']:.1f} s), "
                  f"driver peak RSS {res['driver_peak_mb']:,.0f} MB (+"
                  f"{res['driver_peak_mb'] - res['driver_base_mb']:,.0f} MB during ingest), "
                  f"{res['duplicates']:,} duplicates dropped, {res['shards']} shards"
                  + (", worker steps " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                                   res["steps"].items()) if res["steps"] else ""),
                  flush=True)
            if not args.keep:
                shutil.rmtree(pool, ignore_errors=True)
                shutil.rmtree(os.path.join(work, f"run-{n}"), ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")
    summary = "; ".join(
        f"{n / 1e6:g}M: {r['rows_per_s'] / 1e3:,.0f}k rows/s, driver +"
        f"{r['driver_peak_mb'] - r['driver_base_mb']:,.0f} MB (peak {r['driver_peak_mb']:,.0f})"
        for n, r in results.items())
    which = f"ingest from {args.ingest_from}" if args.ingest_from else "ingest"
    print(f"{which}: {summary}")


if __name__ == "__main__":
    main()
