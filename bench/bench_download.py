"""Download: `curate` (Ray tasks driving img2dataset per shard) vs plain img2dataset.download.

Same images, same loopback server, same processes x threads, one process run, alternating
rounds. Prints img/s for both and the ratio (goal >= 0.95: orchestration costs < 5%).

    python bench/bench_download.py [--n 2000] [--processes 2] [--threads 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time

for _k, _v in (("NO_ALBUMENTATIONS_UPDATE", "1"), ("WANDB_MODE", "disabled"),
               ("RAY_AUTH_MODE", "disabled")):
    os.environ.setdefault(_k, _v)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _common import machine, peak_rss_mb  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def make_routes(n: int):
    from curate.media.loopback import Route

    routes = {}
    for i in range(n):
        img = Image.new("RGB", (320 + i % 7 * 20, 240), ((i * 37) % 256, 90, 160))
        ImageDraw.Draw(img).ellipse((60, 40, 220, 200), fill=((i * 13) % 256, 200, 40))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        routes[f"/img/{i}.jpg"] = Route(buf.getvalue(), "image/jpeg")
    return routes


def run_ours(pool: str, work: str, args) -> float:
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline as parse_config

    cfg = parse_config({
        "stages": ["download"], "pool": {"shard_size": args.shard_size},
        "download": {"threads": args.threads, "processes": args.processes, "timeout": 10,
                     "allow_private_addresses": True},
        "run": {"max_retries": 0}})
    out = f"{work}/ours"
    t = time.perf_counter()
    m = run_pipeline(cfg, out, pool=pool)
    dt = time.perf_counter() - t
    assert m["stages"]["download"]["kept"] == args.n, m["stages"]["download"]
    shutil.rmtree(out)
    return dt


def run_plain(pool: str, work: str, args) -> float:
    from img2dataset import download

    out = f"{work}/plain"
    t = time.perf_counter()
    download(url_list=pool, input_format="parquet", url_col="url", caption_col="caption",
             output_format="parquet", output_folder=out, processes_count=args.processes,
             thread_count=args.threads, number_sample_per_shard=args.shard_size,
             resize_mode="no", disable_all_reencoding=True, timeout=10, extract_exif=False,
             compute_hash="sha256")
    dt = time.perf_counter() - t
    ok = sum(pq.read_table(f, columns=["status"])["status"].to_pylist().count("success")
             for f in sorted(os.listdir(out)) and
             [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".parquet")])
    assert ok == args.n, ok
    shutil.rmtree(out)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from curate.core import engine
    from curate.media.loopback import LoopbackServer

    work = tempfile.mkdtemp(prefix="bench-dl-")
    with LoopbackServer(make_routes(args.n)) as srv:
        pool = f"{work}/pool.parquet"
        pq.write_table(pa.table({"url": [srv.url(f"/img/{i}.jpg") for i in range(args.n)],
                                 "caption": [f"a picture {i}" for i in range(args.n)]}), pool)
        engine.init(num_cpus=args.processes)
        run_ours(pool, work, args)  # warm-up: worker processes import img2dataset once
        ours, plain = [], []
        for _ in range(args.rounds):
            plain.append(run_plain(pool, work, args))
            ours.append(run_ours(pool, work, args))
    shutil.rmtree(work, ignore_errors=True)
    o, p = args.n / min(ours), args.n / min(plain)
    print(f"machine: {machine()}; {args.n} JPEGs on loopback, {args.processes} processes x "
          f"{args.threads} threads, shards of {args.shard_size}, best of {args.rounds}")
    print(f"plain img2dataset: {p:8.1f} img/s   ({', '.join(f'{x:.2f}s' for x in plain)})")
    print(f"curate download:   {o:8.1f} img/s   ({', '.join(f'{x:.2f}s' for x in ours)})")
    print(f"ratio curate/plain: {o / p:.2f}   peak RSS driver {peak_rss_mb():.0f} MB, "
          f"children {peak_rss_mb(True):.0f} MB")


if __name__ == "__main__":
    main()
