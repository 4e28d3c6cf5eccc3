"""Does memory stay flat as the pool grows? Peak RSS of match+balance and of prune, 100k vs 1M.

Two pipelines on synthetic pools, each (pipeline, size) run in its own fresh subprocess so
that no peak carries over from one measurement to the next:

- ``match``: stages [match, balance, report] on a caption-only pool (url, caption) with the default
  vocabulary (``match.metadata: default``). Captions are 5-15 entries of that vocabulary
  drawn with a Zipf weighting over a seeded permutation of it, so the matcher finds several
  entries per caption and balancing has a head to flatten; 0.1% exact duplicate rows.
- ``prune``: stages [score (top_fraction 0.5), prune] on a pool that brings ``image_emb``
  and ``text_emb`` (fixed_size_list<float16>[--dim]; scored without a model): clustered
  unit vectors (--concepts centres + noise, cosine ~0.75 to the centre), captions' vectors
  near their image's, with --dup-frac planted near-duplicates (cosine ~0.999); k-means
  k=--k, dedup_eps and DBP (target_fraction 0.5).

Pools are generated and written in chunks (one Parquet file, row groups of --chunk rows),
so the generator never holds the pool. ``pool.shard_size`` is --shard-size (50,000: 2 vs 20
shards).

Peak RSS covers the driver and the Ray workers, which are not children of the driver in the
rusage sense: inside the measured subprocess a thread samples, every --interval s, the RSS
of the driver and of every descendant process (psutil, vendored by Ray). Descendants whose
command line is a Ray worker's (``ray::<task>``, ``default_worker.py``) are workers; the
others (gcs_server, raylet, agents, monitors) are Ray's system processes, reported apart.
Reported: the driver peak, the largest single-worker peak, and the peak of driver + workers
("total"), raw and minus the baseline measured after ``engine.init`` (Ray's fixed cost:
about 650 MB over all its processes, STACK.md). Each sample is tagged with the step that
was running (ingest, each ``engine.map_items`` call by its description, and the driver's
work after it), so a growth can be pinned on a step and on the driver or the workers.

    .venv/bin/python bench/bench_scale.py                       # 100k and 1M, both pipelines
    .venv/bin/python bench/bench_scale.py --sizes 20000,200000 --only prune --keep

The goal (issue "Production batch jobs", item 6): peak at the largest size <= 1.3 x the peak
at the smallest. The exit code is 0 either way; the last lines say whether it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

GOAL = 1.3
DRIVER_GOAL = 1.1  # the driver holds O(1) state in pairs
MB = 2**20
PIPELINES = ("match", "prune")


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} cores"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- pools
def _index_strings(start: int, n: int):
    import pyarrow as pa

    return pa.array(np.arange(start, start + n, dtype=np.int64)).cast(pa.string())


def _zipf_sampler(n_entries: int, exponent: float, rng: np.random.Generator):
    """Draw entry ids with P(rank r) ~ 1 / r**exponent over a seeded permutation of ids."""
    weights = 1.0 / np.arange(1, n_entries + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    perm = rng.permutation(n_entries)

    def draw(size: int) -> np.ndarray:
        ranks = np.minimum(np.searchsorted(cdf, rng.random(size)), n_entries - 1)
        return perm[ranks]

    return draw


def make_match_pool(path: str, n: int, seed: int, chunk: int, dup_frac: float,
                    exponent: float) -> dict[str, Any]:
    """url, caption: captions of 5-15 Zipf-drawn vocabulary entries; exact duplicate rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from curate.vocab import load_vocabulary

    entries = pa.array(load_vocabulary("default"), pa.string())
    rng = np.random.default_rng(seed)
    draw = _zipf_sampler(len(entries), exponent, rng)
    schema = pa.schema([("url", pa.string()), ("caption", pa.string())])
    words = dups = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            lengths = rng.integers(5, 16, size=m)
            offsets = np.zeros(m + 1, np.int32)
            np.cumsum(lengths, out=offsets[1:])
            picks = entries.take(pa.array(draw(int(offsets[-1]))))
            captions = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), picks), " ")
            urls = pc.binary_join_element_wise(f"https://img{seed}.example.com/",
                                               _index_strings(s, m), ".jpg", "")
            rows = np.arange(m)
            n_dup = int(dup_frac * m)
            if n_dup:  # exact duplicates (same url and caption) of other rows of the chunk
                perm = rng.permutation(m)
                rows[perm[:n_dup]] = perm[n_dup: 2 * n_dup]
                dups += n_dup
            idx = pa.array(rows)
            writer.write_table(pa.table({"url": urls.take(idx), "caption": captions.take(idx)},
                                        schema=schema), row_group_size=chunk)
            words += int(offsets[-1])
    return {"rows": n, "exact_duplicates": dups, "entries_per_caption": words / max(n, 1)}


def make_prune_pool(path: str, n: int, seed: int, chunk: int, dim: int, concepts: int,
                    dup_frac: float) -> dict[str, Any]:
    """url, caption, image_emb (fixed_size_list<float16>[dim]): clusters + near-duplicates."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((concepts, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = np.float32(0.9 / np.sqrt(dim))  # noise norm ~0.9: cosine ~0.75 to the centre
    tiny = np.float32(0.045 / np.sqrt(dim))  # cosine ~0.999 to the source
    schema = pa.schema([("url", pa.string()), ("caption", pa.string()),
                        ("image_emb", pa.list_(pa.float16(), dim)),
                        ("text_emb", pa.list_(pa.float16(), dim))])
    planted = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            x = centres[rng.integers(0, concepts, size=m)]
            x += sigma * rng.standard_normal(x.shape, dtype=np.float32)
            n_dup = int(dup_frac * m)
            if n_dup:  # near-copies of other rows of the chunk
                perm = rng.permutation(m)
                dst, src = perm[:n_dup], perm[n_dup: 2 * n_dup]
                x[dst] = x[src] / np.linalg.norm(x[src], axis=1, keepdims=True)
                x[dst] += tiny * rng.standard_normal((n_dup, dim), dtype=np.float32)
                planted += n_dup
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            emb = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), dim)
            # a caption embedding near its image's: the CLIP scores have a spread to cut
            t = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
            txt = pa.FixedSizeListArray.from_arrays(pa.array(t.astype(np.float16).ravel()), dim)
            idx = _index_strings(s, m)
            writer.write_table(pa.table({
                "url": pc.binary_join_element_wise(f"https://emb{seed}.example.com/", idx,
                                                   ".jpg", ""),
                "caption": pc.binary_join_element_wise("a photo of thing ", idx, ""),
                "image_emb": emb, "text_emb": txt}, schema=schema), row_group_size=chunk)
    return {"rows": n, "planted_near_duplicates": planted, "dim": dim}


# ----------------------------------------------------------------------------- sampling
def _rss_shmem() -> int:
    """Bytes of shared memory (RssShmem) in this process's RSS: pages of Ray's object store
    that the driver touched reading results (Linux; 0 elsewhere). They belong to the store,
    which reuses them, not to the driver's state, so the driver's own memory is RSS minus
    this ("private" below)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssShmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """RSS of this process (the driver) and of its descendants, every ``interval`` s.

    Peaks are kept overall and per step (``self.phase``, set by the main thread).
    """

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.me = psutil.Process()
        self.phase = "start"
        self.phases: list[str] = []  # in order of first appearance
        self.peak: dict[str, dict[str, float]] = {}
        self.worker_peak: dict[int, tuple[float, str]] = {}  # pid -> (peak MB, its title)
        self.samples = 0
        self._halt = threading.Event()
        self._kind: dict[tuple[int, float], str] = {}

    def classify(self, p: Any) -> str:
        key = (p.pid, p.create_time())
        kind = self._kind.get(key)
        if kind is None or kind == "starting":
            cmd = " ".join(p.cmdline())
            title = cmd.split(" ", 1)[0]
            if "default_worker.py" in cmd or (title.startswith("ray::")
                                               and not title.endswith("Agent")):
                kind = "worker"
            elif cmd:
                kind = "system"
            else:
                kind = "starting"
            self._kind[key] = kind
        return kind

    def snapshot(self) -> dict[str, Any]:
        ps = self.psutil
        driver = self.me.memory_info().rss / MB
        shmem = _rss_shmem() / MB
        workers: dict[int, float] = {}
        titles: dict[int, str] = {}
        system = 0.0
        for p in self.me.children(recursive=True):
            try:
                kind = self.classify(p)
                rss = p.memory_info().rss / MB
                if kind == "worker":
                    workers[p.pid] = rss
                    titles[p.pid] = p.cmdline()[0] if p.cmdline() else "?"
                elif kind == "system":
                    system += rss
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                continue
        return {"driver": driver, "driver_private": driver - shmem, "workers": workers,
                "titles": titles, "system": system}

    def record(self, snap: dict[str, Any]) -> None:
        wsum = sum(snap["workers"].values())
        wmax = max(snap["workers"].values(), default=0.0)
        values = {"driver": snap["driver"], "driver_private": snap["driver_private"],
                  "worker_max": wmax, "workers_sum": wsum,
                  "total": snap["driver"] + wsum, "system": snap["system"],
                  "all": snap["driver"] + wsum + snap["system"]}
        for ph in ("*", self.phase):
            if ph not in self.peak:
                self.peak[ph] = dict.fromkeys(values, 0.0)
                if ph != "*":
                    self.phases.append(ph)
            cur = self.peak[ph]
            for k, v in values.items():
                cur[k] = max(cur[k], v)
        for pid, rss in snap["workers"].items():
            if rss > self.worker_peak.get(pid, (0.0, ""))[0]:
                self.worker_peak[pid] = (rss, f"{snap['titles'].get(pid, '?')} in {self.phase}")
        self.samples += 1

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.record(self.snapshot())
            except Exception as err:  # noqa: BLE001 - sampling must never kill the run
                print(f"sampler: {type(err).__name__}: {err}", file=sys.stderr)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.record(self.snapshot())


def _instrument(sampler: Sampler) -> None:
    """Tag samples with the step that runs: ingest, each engine map, the driver after it.

    Wraps module attributes of this process only (the driver); no curate file changes.
    """
    import curate.core.engine
    import curate.driver

    map_items, ingest, run_stage = (curate.core.engine.map_items, curate.driver.ingest,
                                    curate.driver._run_stage)

    def mapped(fn, items, **kw):
        desc = kw.get("desc") or "map"
        sampler.phase = f"{desc} [map]"
        try:
            return map_items(fn, items, **kw)
        finally:
            sampler.phase = f"{desc} [driver after]"

    def ingested(*a, **kw):
        sampler.phase = "ingest [driver]"
        try:
            return ingest(*a, **kw)
        finally:
            sampler.phase = "after ingest [driver]"

    def staged(rd, cfg, stage, *a, **kw):
        sampler.phase = f"{stage} [driver before]"
        try:
            return run_stage(rd, cfg, stage, *a, **kw)
        finally:
            sampler.phase = f"{stage} [driver end]"

    curate.core.engine.map_items = mapped
    curate.driver.ingest = ingested
    curate.driver._run_stage = staged


def pipeline_config(pipeline: str, args: argparse.Namespace) -> dict[str, Any]:
    base: dict[str, Any] = {"pool": {"shard_size": args.shard_size},
                            "run": {"num_cpus": 2, "max_retries": 0}}
    if pipeline == "match":
        front = ["language"] if args.language else []
        return {**base, "stages": [*front, "match", "balance", "report"],
                "match": {"metadata": "default"}, "balance": {"t": args.t}}
    return {**base, "stages": ["score", "prune"],
            "score": {"filter": {"top_fraction": 0.5}},
            "prune": {"k": args.k, "dedup_eps": args.dedup_eps, "dbp": True,
                      "target_fraction": 0.5}}


def child(args: argparse.Namespace) -> None:
    """One measurement: init Ray, run the pipeline, write peaks to ``args.result``."""
    import logging

    import ray  # noqa: F401 - puts Ray's vendored psutil on sys.path

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sampler = Sampler(args.interval)
    sampler.start()
    from curate.core import engine
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline as parse_config

    sampler.phase = "ray init"
    t0 = time.monotonic()
    engine.init(num_cpus=2)
    init_s = time.monotonic() - t0
    time.sleep(args.settle)  # let the prestarted workers finish starting
    snap = sampler.snapshot()
    base = {"driver": snap["driver"], "worker_max": max(snap["workers"].values(), default=0.0),
            "workers": len(snap["workers"]), "total": snap["driver"] + sum(
                snap["workers"].values()), "system": snap["system"]}
    base["all"] = base["total"] + base["system"]
    _instrument(sampler)
    cfg = parse_config(pipeline_config(args.child, args), "bench")
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    manifest = run_pipeline(cfg, args.out, pool=args.pool)
    wall = time.monotonic() - t0
    sampler.phase = "done"
    sampler.stop()
    stages = {s: {k: v for k, v in st.items()
                  if k in ("rows_in", "kept", "dropped", "seconds", "worker_seconds")}
              for s, st in manifest.get("stages", {}).items()}
    for s, st in manifest.get("stages", {}).items():  # the global steps that ran
        stages[s]["steps"] = list((st.get("steps") or {}).keys())
    result = {
        "pipeline": args.child, "n": args.n, "wall_s": wall, "init_s": init_s,
        "load": [load0, os.getloadavg()[0]], "baseline": base, "peak": sampler.peak["*"],
        "phases": [(ph, sampler.peak[ph]) for ph in sampler.phases],
        "worker_peaks": sorted(sampler.worker_peak.values(), reverse=True)[:6],
        "samples": sampler.samples, "pool": manifest.get("pool", {}).get("rows"),
        "duplicates": manifest.get("pool", {}).get("duplicates"),
        "timings": manifest.get("timings"), "stages": stages,
    }
    with open(args.result, "w") as f:
        json.dump(result, f, default=str)
    engine.shutdown()


# ----------------------------------------------------------------------------- driver
def measure(pipeline: str, n: int, pool: str, work: str, args: argparse.Namespace
            ) -> dict[str, Any] | None:
    out = os.path.join(work, f"run-{pipeline}-{n}")
    result = os.path.join(work, f"result-{pipeline}-{n}.json")
    logf = os.path.join(work, f"log-{pipeline}-{n}.txt")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1",
               NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled",
               CURATE_RAY_TMP=tempfile.mkdtemp(prefix="bsr-", dir="/tmp"))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", pipeline, "--n", str(n),
           "--pool", pool, "--out", out, "--result", result,
           "--interval", str(args.interval), "--settle", str(args.settle),
           "--shard-size", str(args.shard_size), "--k", str(args.k),
           "--dedup-eps", str(args.dedup_eps), "--t", str(args.t)]
    if args.language:
        cmd.append("--language")
    if args.verbose:
        cmd.append("--verbose")
    log(f"{pipeline} n={n:,}: running in a fresh process ({load()})")
    with open(logf, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    shutil.rmtree(env["CURATE_RAY_TMP"], ignore_errors=True)
    if rc != 0 or not os.path.exists(result):
        with open(logf, errors="replace") as lf:
            tail = lf.read()[-3000:]
        log(f"{pipeline} n={n:,}: FAILED (exit {rc}); log tail:\n{tail}")
        return None
    with open(result) as f:
        r = json.load(f)
    print_run(r)
    return r


def print_run(r: dict[str, Any]) -> None:
    b, p = r["baseline"], r["peak"]
    print(f"  wall {r['wall_s']:.1f} s ({r['n'] / r['wall_s']:,.0f} pairs/s), ray init "
          f"{r['init_s']:.1f} s, load {r['load'][0]:.1f} -> {r['load'][1]:.1f}, "
          f"{r['samples']} samples; pool rows {r['pool']}, duplicates {r['duplicates']}")
    print(f"  baseline after init: driver {b['driver']:.0f} MB, {b['workers']} workers (max "
          f"{b['worker_max']:.0f} MB), driver+workers {b['total']:.0f} MB, Ray system "
          f"{b['system']:.0f} MB, all {b['all']:.0f} MB")
    print(f"  peaks: driver {p['driver']:.0f} MB (private {p.get('driver_private', 0):.0f}), "
          f"worker max {p['worker_max']:.0f} MB, "
          f"driver+workers {p['total']:.0f} MB (minus baseline {p['total'] - b['total']:.0f}),"
          f" Ray system {p['system']:.0f} MB, all {p['all']:.0f} MB")
    print("  | step | driver MB | worker max MB | workers sum MB | driver+workers MB |")
    print("  |---|---:|---:|---:|---:|")
    for ph, v in r["phases"]:
        print(f"  | {ph} | {v['driver']:.0f} | {v['worker_max']:.0f} | {v['workers_sum']:.0f}"
              f" | {v['total']:.0f} |")
    print("  largest worker peaks: " + "; ".join(f"{mb:.0f} MB ({what})"
                                                 for mb, what in r["worker_peaks"]))
    print(f"  ingest {r['timings'].get('ingest', 0):.1f} s")
    for name, st in r["stages"].items():
        ws = st.get("worker_seconds") or {}
        parts = ", ".join(f"{k} {v:.1f}" for k, v in ws.items())
        print(f"  {name}: wall {st.get('seconds', 0):.1f} s; worker s by phase: "
              f"{parts or '-'}; steps {', '.join(st.get('steps', []))}", flush=True)


def summary(results: dict[tuple[str, int], dict[str, Any]], sizes: list[int]) -> None:
    lo, hi = min(sizes), max(sizes)
    print("\n| pipeline | size | wall s | pairs/s | driver peak MB | worker max MB | "
          "total peak MB | total - baseline MB | ratio total | ratio total - baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for pipeline in PIPELINES:
        small = results.get((pipeline, lo))
        for n in sizes:
            r = results.get((pipeline, n))
            if r is None:
                continue
            p, b = r["peak"], r["baseline"]
            ratio = ratio_net = ""
            if small is not None and n != lo:
                ratio = f"{p['total'] / small['peak']['total']:.2f}"
                ratio_net = f"{_net(r) / max(_net(small), 1):.2f}"
            print(f"| {pipeline} | {n:,} | {r['wall_s']:.1f} | {n / r['wall_s']:,.0f} | "
                  f"{p['driver']:.0f} | {p['worker_max']:.0f} | {p['total']:.0f} | "
                  f"{p['total'] - b['total']:.0f} | {ratio} | {ratio_net} |")
        big = results.get((pipeline, hi))
        if small is not None and big is not None and hi != lo:
            parts = {k: big["peak"][k] / max(small["peak"][k], 1)
                     for k in ("driver", "worker_max", "total")}
            ok = parts["total"] <= GOAL
            verdicts.append(
                f"{pipeline}: driver peak {big['peak']['driver']:.0f} MB at {hi:,} vs "
                f"{small['peak']['driver']:.0f} MB at {lo:,} = {parts['driver']:.2f}x: goal <= "
                f"{DRIVER_GOAL}x {'HOLDS' if parts['driver'] <= DRIVER_GOAL else 'FAILS'}")
            priv = (big["peak"].get("driver_private", 0.0)
                    / max(small["peak"].get("driver_private", 0.0), 1))
            verdicts.append(
                f"{pipeline}: driver private peak (RSS minus Ray's shared-memory pages) "
                f"{big['peak'].get('driver_private', 0):.0f} MB at {hi:,} vs "
                f"{small['peak'].get('driver_private', 0):.0f} MB at {lo:,} = {priv:.2f}x")
            verdicts.append(
                f"{pipeline}: total peak {big['peak']['total']:.0f} MB at {hi:,} vs "
                f"{small['peak']['total']:.0f} MB at {lo:,} = {parts['total']:.2f}x "
                f"(driver {parts['driver']:.2f}x, worker max {parts['worker_max']:.2f}x, "
                f"minus baseline {_net(big) / max(_net(small), 1):.2f}x): goal <= {GOAL}x "
                f"{'HOLDS' if ok else 'FAILS'}; total peak during {_peak_step(small)} at "
                f"{lo:,}, during {_peak_step(big)} at {hi:,}")
    print()
    for v in verdicts:
        print(v)
    if not verdicts:
        print("goal: not evaluated (needs two sizes of a pipeline that both finished)")


def _peak_step(r: dict[str, Any]) -> str:
    """The step whose driver + workers peak is the run's, with its split."""
    ph, v = max(r["phases"], key=lambda item: item[1]["total"])
    return (f"'{ph}' (driver {v['driver']:.0f} MB, workers {v['workers_sum']:.0f} MB, "
            f"largest worker {v['worker_max']:.0f} MB)")


def _net(r: dict[str, Any]) -> float:
    return r["peak"]["total"] - r["baseline"]["total"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="100000,1000000", help="pool sizes, comma-separated")
    ap.add_argument("--sizes-prune", default=None,
                    help="pool sizes of the prune pipeline (default: --sizes)")
    ap.add_argument("--only", choices=PIPELINES, help="run one pipeline only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary pools and runs")
    ap.add_argument("--workdir", default=None, help="where pools and runs go (default: a "
                    "new temporary folder)")
    ap.add_argument("--shard-size", type=int, default=50_000)
    ap.add_argument("--chunk", type=int, default=50_000, help="rows generated at a time")
    ap.add_argument("--dim", type=int, default=64, help="embedding dimension (prune)")
    ap.add_argument("--concepts", type=int, default=200, help="true concept centres (prune)")
    ap.add_argument("--dup-frac", type=float, default=0.02, help="planted near-duplicates")
    ap.add_argument("--k", type=int, default=100, help="prune.k")
    ap.add_argument("--dedup-eps", type=float, default=0.01, help="prune.dedup_eps")
    ap.add_argument("--t", type=int, default=20_000, help="balance.t")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the captions")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, s")
    ap.add_argument("--settle", type=float, default=3.0, help="s after init before baseline")
    ap.add_argument("--timeout", type=float, default=3600, help="per run, s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="curate's INFO logs in run logs")
    ap.add_argument("--language", action="store_true",
                    help="match pipeline: a language stage (fastText lid.176) in front")
    # internal: one measurement in this (fresh) process
    ap.add_argument("--child", choices=PIPELINES, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0

    def parse(text: str) -> list[int]:
        return sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})

    sizes = parse(args.sizes)
    sizes_of = {"match": sizes, "prune": parse(args.sizes_prune or args.sizes)}
    pipelines = [args.only] if args.only else list(PIPELINES)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    os.makedirs(work, exist_ok=True)
    log(f"bench_scale: sizes {sizes}, pipelines {pipelines}, work {work}; {load()}")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        for pipeline in pipelines:
            for n in sizes_of[pipeline]:
                pool = os.path.join(work, f"pool-{pipeline}-{n}.parquet")
                t0 = time.monotonic()
                if pipeline == "match":
                    info = make_match_pool(pool, n, args.seed, args.chunk, 0.001, args.zipf)
                else:
                    info = make_prune_pool(pool, n, args.seed, args.chunk, args.dim,
                                           args.concepts, args.dup_frac)
                log(f"{pipeline} pool of {n:,} generated in {time.monotonic() - t0:.1f} s "
                    f"({os.path.getsize(pool) / MB:.0f} MB): {info}")
                r = measure(pipeline, n, pool, work, args)
                if r is not None:
                    results[(pipeline, n)] = r
                if not args.keep:
                    shutil.rmtree(os.path.join(work, f"run-{pipeline}-{n}"), ignore_errors=True)
                    os.remove(pool)
    finally:
        for pipeline in pipelines:
            summary({k: v for k, v in results.items() if k[0] == pipeline},
                    sizes_of[pipeline])
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
