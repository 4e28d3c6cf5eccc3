"""Download: `curate` (Ray tasks driving img2dataset per shard) vs plain img2dataset.download,
and curate's consent checks + polite crawling (robots.txt, TDMRep, per-host cap, 429
back-off: the defaults) vs today's download (``consent: {robots: false, tdmrep: false},
polite: null``); and the defaults with ``polite.split_cap: false`` (every request's slot
from the shared gate actor: what the cap costs where it cannot be split).

Same images on the same loopback pool of ``--hosts`` servers (each bound to its own
127.0.0.k address, so each is its own host name for the per-host cap and its own origin for
robots.txt), same processes x threads, one process run, alternating rounds. Prints img/s
for each and the ratios (goals >= 0.95: orchestration and politeness each cost < 5%).

    python bench/bench_download.py [--n 2000] [--hosts 16] [--processes 2] [--threads 32]
                                   [--rounds 2]
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


def make_routes(n: int, hosts: int = 1):
    """Per host: its routes (image i lives on host i % hosts, at /img/i.jpg)."""
    from curate.media.loopback import Route

    routes: list[dict] = [{} for _ in range(hosts)]
    for i in range(n):
        img = Image.new("RGB", (320 + i % 7 * 20, 240), ((i * 37) % 256, 90, 160))
        ImageDraw.Draw(img).ellipse((60, 40, 220, 200), fill=((i * 13) % 256, 200, 40))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        routes[i % hosts][f"/img/{i}.jpg"] = Route(buf.getvalue(), "image/jpeg")
    for k in range(hosts):  # a realistic consent file per host: nothing of ours disallowed
        routes[k]["/robots.txt"] = Route(b"User-agent: *\nDisallow: /admin/\n", "text/plain")
    return routes


MODES = {  # download section of each variant of ours
    "polite": {},  # the defaults: consent + polite, the per-host cap split over the tasks
    "today": {"consent": {"robots": False, "tdmrep": False}, "polite": None},
    "gate": {"polite": {"split_cap": False}},  # every request's slot from the shared gate
}


def run_ours(pool: str, work: str, args, mode: str = "polite") -> float:
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline as parse_config

    cfg = parse_config({
        "stages": ["download"], "pool": {"shard_size": args.shard_size},
        "download": {"threads": args.threads, "processes": args.processes, "timeout": 10,
                     "allow_private_addresses": True, **MODES[mode]},
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
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from curate.core import engine
    from curate.media.loopback import LoopbackServer

    work = tempfile.mkdtemp(prefix="bench-dl-")
    servers = [LoopbackServer(r, host=f"127.0.0.{k + 1}").start()
               for k, r in enumerate(make_routes(args.n, args.hosts))]
    try:
        pool = f"{work}/pool.parquet"
        urls = [servers[i % args.hosts].url(f"/img/{i}.jpg") for i in range(args.n)]
        pq.write_table(pa.table({"url": urls,
                                 "caption": [f"a picture {i}" for i in range(args.n)]}), pool)
        engine.init(num_cpus=args.processes)
        run_ours(pool, work, args)  # warm-up: worker processes import img2dataset once
        today, ours, plain, gated = [], [], [], []
        for _ in range(args.rounds):
            plain.append(run_plain(pool, work, args))
            today.append(run_ours(pool, work, args, "today"))
            ours.append(run_ours(pool, work, args))
            gated.append(run_ours(pool, work, args, "gate"))
        peak = max(s.peak for s in servers)
    finally:
        for s in servers:
            s.stop()
    shutil.rmtree(work, ignore_errors=True)
    o, t, p = args.n / min(ours), args.n / min(today), args.n / min(plain)
    g = args.n / min(gated)

    def runs(xs):
        return ", ".join(f"{x:.2f}s" for x in xs)
    print(f"machine: {machine()}; {args.n} JPEGs on {args.hosts} loopback hosts, "
          f"{args.processes} processes x {args.threads} threads, shards of "
          f"{args.shard_size}, best of {args.rounds}")
    print(f"plain img2dataset:           {p:8.1f} img/s   ({runs(plain)})")
    print(f"curate download, today:      {t:8.1f} img/s   ({runs(today)})")
    print(f"curate, consent + polite:    {o:8.1f} img/s   ({runs(ours)})")
    print(f"  the same, split_cap false: {g:8.1f} img/s   ({runs(gated)})")
    print(f"ratio curate today/plain: {t / p:.2f}   consent+polite/today: {o / t:.2f} "
          f"(split_cap false: {g / t:.2f})   most requests in flight on one host: {peak}")
    print(f"peak RSS driver {peak_rss_mb():.0f} MB, children {peak_rss_mb(True):.0f} MB")


if __name__ == "__main__":
    main()
