"""Driver and worker overhead per shard-step: the same pairs in many small shards vs few.

A 10B-pair run in 50k-pair shards is 200,000 shards; every step of every stage touches each
of them once. What the driver spends per shard-step (serial, however large the cluster) and
what a worker spends per shard beyond the stage's own per-pair work are what decide whether
such a run is practical. This bench measures both on one pool of ``--pairs`` caption pairs
(real captions from ../shared/data when present, each made unique with a suffix; else
synthetic ones) run through ``stages: [match, balance]`` (default vocabulary) twice, each
in a fresh process with its own local Ray (``--cpus``):

- **many**: ``--shard-size`` (250: 4,000 shards of 1M pairs), the case under study;
- **few**: the same pairs in ``--few`` shards (10), the reference.

A shard-step is one work item of one step: match's shard step, balance's ``count`` map and
its shard step, so 3 per shard. Per run it prints: wall, the driver process's CPU seconds
(``time.process_time``; Ray's C++ threads in the driver count there) and its main thread's
(``time.thread_time``: the Python loop), per engine call (ingest's steps and each stage
step) and outside them; CPU seconds of the Ray worker processes and of Ray's own processes
(raylet, GCS: the scheduling), sampled with psutil; the worker phases from run.json
(``worker_seconds``: read, digest, process, count, write); how often run.json was saved and
its size and the shard files' bytes per pair; the driver's memory per shard outcome;
peak RSS. Then the marginal figures many vs few: driver CPU per shard-step, Ray workers'
CPU per shard-step, worker-side overhead per shard-step (extra cores x wall per extra
shard-step, the issue's measure, which a shared machine's load inflates) and the goals
(driver <= 0.5 ms per shard-step; worker overhead halved from 16 ms).

In both runs, after the pipeline, the worker side in this process, no Ray: ``run_shard`` /
``run_map`` over ``--sample`` shards of a fresh run directory sharing the pool (CPU per
shard, the phases' shares), then under cProfile over a second sample (``--profile-top``
lines), and ``Matcher.match``'s CPU per call on 1 caption and on a shard's (its fixed
part). In the many-shard run also:

- the engine's floor: ``engine.map_items`` of a function that does nothing over as many
  items as shards (driver and Ray CPU per item: Ray's task round trip and our loop);
- per result, ``ray.wait(refs, num_returns=1)`` and the engine's scans of its running set
  against the number of refs in flight (the engine makes one such call per result, so on a
  6,400-CPU cluster each result scans 6,400 refs);

and with ``--profile`` the driver's main thread under cProfile during the whole pipeline
(costs CPU: the driver figures of a profiled run are not the ones to report).

    .venv/bin/python bench/bench_driver.py                       # 1M pairs: 4,000 vs 10 shards
    .venv/bin/python bench/bench_driver.py --pairs 200000 --shard-size 250 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import machine, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DRIVER_GOAL_MS = 0.5
WORKER_BEFORE_MS = 16.0  # the measure before this work (worker-side per shard-step)


def make_pool(path: str, n: int) -> str:
    """url, caption: real captions (Flickr8k + web alt text) made unique, else synthetic."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    caps: list[str] = []
    flickr = SHARED / "captions" / "flickr8k_captions.parquet"
    if flickr.exists():
        caps += pq.read_table(flickr)["caption"].to_pylist()
        caps += pq.read_table(SHARED / "pools" / "web_alt_text_10k.parquet")["TEXT"].to_pylist()
    caps = [c for c in caps if c and c.strip() and "\x00" not in c and len(c) < 4000]
    source = "real captions (Flickr8k + web alt text)"
    if not caps:
        caps = [f"a photo of a dog number {i} on the beach" for i in range(10_000)]
        source = "synthetic captions"
    base = pa.array(caps, pa.string())
    idx = pa.array([i % len(caps) for i in range(n)])
    num = pa.array(range(n)).cast(pa.string())
    caption = pc.binary_join_element_wise(base.take(idx), num, " #")
    url = pc.binary_join_element_wise("https://img.example.com/", num, ".jpg", "")
    pq.write_table(pa.table({"url": url, "caption": caption}), path, row_group_size=131_072)
    return source


# ----------------------------------------------------------------------------- the child
class CpuSampler(threading.Thread):
    """CPU seconds of Ray's processes under this one, split into workers and the rest."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        import psutil  # vendored by Ray: importable once ray is

        self.ps, self.me, self.interval = psutil, psutil.Process(), interval
        self.last: dict[tuple[int, float], tuple[str, float]] = {}
        self.halt = threading.Event()

    def sample(self) -> None:
        for p in self.me.children(recursive=True):
            try:
                key = (p.pid, p.create_time())
                kind = self.last.get(key, ("", 0.0))[0]
                if not kind:
                    cmd = " ".join(p.cmdline())
                    kind = "worker" if ("default_worker.py" in cmd or cmd.startswith("ray::")
                                        and "Agent" not in cmd.split(" ", 1)[0]) else "system"
                c = p.cpu_times()
                self.last[key] = (kind, c.user + c.system)
            except (self.ps.NoSuchProcess, self.ps.AccessDenied, self.ps.ZombieProcess):
                continue

    def totals(self) -> dict[str, float]:
        out = {"worker": 0.0, "system": 0.0}
        for kind, sec in self.last.values():
            out[kind] += sec
        return out

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()


def _clock() -> dict[str, float]:
    return {"wall": time.perf_counter(), "cpu": time.process_time(),
            "thread": time.thread_time()}


def _since(t0: dict[str, float]) -> dict[str, float]:
    return {k: v - t0[k] for k, v in _clock().items()}


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and everything it holds (dicts, lists, dataclass fields)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


def _shards(items: list[Any]) -> int:
    """Shards in a list of items or outcomes: the driver may run a batch per task, a list or
    a (first position, list) pair (curate/core/batches.py)."""
    def one(x: Any) -> int:
        x = getattr(x, "item", x)
        if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], list):
            x = x[1]
        return len(x) if isinstance(x, list) else 1

    return sum(one(x) for x in items)


def _shard_values(outcomes: list[Any]) -> list[Any]:
    """Each shard's value, also from batch outcomes (a list of (ok, value) per shard)."""
    out = []
    for o in outcomes:
        if o.ok and isinstance(o.value, list):
            out += [v for ok, v in o.value if ok]
        elif o.ok:
            out.append(o.value)
    return out


def spread(outcomes: list[Any]) -> dict[str, Any]:
    """A shard step's worker phases: the median shard's, and the seconds above it summed
    over shards (a worker's first shard pays its ``setup``: the matcher's build)."""
    import numpy as np

    rows = [v["timings"] for v in _shard_values(outcomes)
            if isinstance(v, dict) and v.get("timings")]
    if not rows:
        return {}
    sample = outcomes[:200]
    out: dict[str, Any] = {"median_ms": {}, "excess_s": {},
                           "outcome_bytes": deep_size(sample) / _shards(sample)}
    for k in rows[0]:
        v = np.array([r.get(k, 0.0) for r in rows])
        med = float(np.median(v))
        out["median_ms"][k] = med * 1e3
        out["excess_s"][k] = float(np.clip(v - med, 0, None).sum())
    return out


def instrument(calls: list[dict[str, Any]], saves: list[float], sampler: CpuSampler,
               marks: dict[str, Any]) -> None:
    """Per engine call: items, wall, driver process and main-thread CPU; run.json saves;
    the driver's clocks and Ray's CPU at the end of ingest (``marks``)."""
    import curate.core.engine as engine
    import curate.core.rundir as rundir
    import curate.driver as driver

    map_items, save, ingest = engine.map_items, rundir.RunDir.save_manifest, driver.ingest

    def ingested(*a, **kw):
        t0 = _clock()
        try:
            return ingest(*a, **kw)
        finally:
            marks["ingest"] = _since(t0)
            sampler.sample()
            marks["ingest_ray"] = sampler.totals()

    def mapped(fn, items, **kw):
        items = list(items)
        w, c, t = time.perf_counter(), time.process_time(), time.thread_time()
        outcomes = []
        try:
            outcomes = map_items(fn, items, **kw)
            return outcomes
        finally:
            batched = getattr(getattr(fn, "func", None), "__name__", "") == "run_batch"
            calls.append({"desc": kw.get("desc") or "map",
                          "items": _shards(items) if batched else len(items),
                          "tasks": len(items),
                          "wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                          "thread": time.thread_time() - t, **spread(outcomes)})

    def saved(self, manifest):
        t = time.perf_counter()
        save(self, manifest)
        saves.append(time.perf_counter() - t)

    engine.map_items, rundir.RunDir.save_manifest = mapped, saved
    driver.ingest = ingested


def engine_floor(n: int, sampler: CpuSampler) -> dict[str, float]:
    """map_items over ``n`` items of a function that does nothing, as the driver calls it:
    the driver's and Ray's CPU per task when a task does no work."""
    from curate.core import engine

    sampler.sample()
    ray0 = sampler.totals()
    w, c, t = time.perf_counter(), time.process_time(), time.thread_time()
    engine.map_items(len, [str(i) for i in range(n)], max_retries=2, timeout_s=3600,
                     desc="floor", on_done=lambda o: None)
    out = {"items": n, "wall_ms": (time.perf_counter() - w) / n * 1e3,
           "cpu_ms": (time.process_time() - c) / n * 1e3,
           "thread_ms": (time.thread_time() - t) / n * 1e3}
    sampler.sample()
    for k, v in sampler.totals().items():
        out[f"{k}_ms"] = (v - ray0[k]) / n * 1e3
    return out


def _never(_: object) -> None:
    """Never runs: its tasks ask for a resource no node has."""


def wait_scaling(sizes: list[int], calls: int = 50) -> dict[int, list[float]]:
    """Microseconds of one ``ray.wait(refs, num_returns=1)`` against len(refs), as the
    engine calls it once per result: every ref in flight, one of them finished (the
    unfinished ones are tasks that ask for a resource no node has: pending, never run);
    and of the engine's Python scans over what runs, also once per result."""
    import ray

    never = ray.remote(_never).options(num_cpus=0, resources={"bench-never": 1})
    out = {}
    for k in sizes:
        refs = [never.remote(0) for _ in range(k - 1)] + [ray.put(0)]
        ray.wait(refs, num_returns=1, timeout=0)  # warm
        t = time.perf_counter()
        for _ in range(calls):
            ray.wait(refs, num_returns=1, timeout=0)
        wait_us = (time.perf_counter() - t) / calls * 1e6
        # the engine's own per-result scans of what runs: the refs' list, the oldest start
        # (the wait's deadline), the overdue ones
        running = {ref: (i, time.monotonic()) for i, ref in enumerate(refs)}
        t = time.perf_counter()
        for _ in range(calls):
            list(running)
            min(t0 for _, t0 in running.values())
            now = time.monotonic()
            [h for h, (_, t0) in running.items() if now - t0 > 3600]
        out[k] = [wait_us, (time.perf_counter() - t) / calls * 1e6]
        for ref in refs[:-1]:
            ray.cancel(ref, force=True)
    return out


def worker_side(cfg: Any, run: str, shards: list[str], sample: int, top: int
                ) -> dict[str, Any]:
    """The worker's code in this process (no Ray): per phase, then under cProfile."""
    try:  # the worker side moved from stages/base.py to stages/runtime.py (issue 24)
        from curate.stages.runtime import run_inline, run_map, run_shard
    except ImportError:
        from curate.stages.base import run_inline, run_map, run_shard

    prof_dir = f"{run}-inproc"
    os.makedirs(prof_dir, exist_ok=True)
    os.symlink(os.path.join(run, "pool"), os.path.join(prof_dir, "pool"))
    conf, fps = cfg.dump(), cfg.fingerprints()
    from curate.stages.base import StageSpec

    def stage(name: str):
        spec = StageSpec(name, prof_dir, conf, fps[name], {}, {})
        try:
            from curate.stages.runtime import build
        except ImportError:
            return cfg.stage_class(name)(spec)
        return build(spec)

    warm = shards[:1]
    k = max(1, min(sample, (len(shards) - 1) // 2))
    timed, profiled = shards[1:1 + k], shards[1 + k:1 + 2 * k]
    match, balance = stage("match"), stage("balance")
    out: dict[str, Any] = {"shards": k}

    def pass_over(label: str, fn, items: list[str], prof: cProfile.Profile | None) -> None:
        phases: dict[str, float] = {}
        t = time.thread_time()  # CPU, not wall: the machine may be shared
        if prof:
            prof.enable()
        for s in items:
            r = fn(s)
            timings = r.get("timings") if isinstance(r, dict) else None
            for key, v in (timings or {}).items():
                phases[key] = phases.get(key, 0.0) + v
        if prof:
            prof.disable()
        if not prof:  # CPU per shard; the phases (wall) as shares of the shard's wall
            wall = sum(phases.values()) or 1.0
            out[label] = {"ms_per_shard": (time.thread_time() - t) / len(items) * 1e3,
                          **{p: v / wall for p, v in phases.items()}}

    # every output written once (and every cache warm: matcher, vocabulary, counts), then
    # each sample's outputs removed and rewritten: timed without, then under the profiler
    run_inline(match, warm + timed + profiled)
    run_inline(balance, warm + timed + profiled)
    prof = cProfile.Profile(time.thread_time)
    for items, p in ((timed, None), (profiled, prof)):
        for s in items:
            os.remove(os.path.join(prof_dir, "match", s))
        pass_over("match.shards", lambda s: run_shard(match.spec, type(match), s), items, p)
        pass_over("balance.count", lambda s: run_map(balance.spec, type(balance), "count", s),
                  items, p)
        for s in items:
            os.remove(os.path.join(prof_dir, "balance", s))
        pass_over("balance.shards", lambda s: run_shard(balance.spec, type(balance), s),
                  items, p)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    out["profile"] = buf.getvalue()
    out["matcher_ms"] = matcher_cost(match, timed[0])
    shutil.rmtree(prof_dir, ignore_errors=True)
    return out


def matcher_cost(match: Any, shard: str, reps: int = 20) -> dict[int, float]:
    """CPU ms of one ``Matcher.match`` call on the first 1 / all captions of a shard: the
    part of a match shard that does not shrink with the shard."""
    captions = match.inputs(shard)["caption"].combine_chunks()
    matcher = match._matcher()
    out = {}
    for n in (1, len(captions)):
        r = reps if n <= 1000 else 2
        t = time.thread_time()
        for _ in range(r):
            matcher.match(captions[:n])
        out[n] = (time.thread_time() - t) / r * 1e3
    return out


def child(args: argparse.Namespace) -> None:
    from curate.core import engine
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline

    engine.init(num_cpus=args.cpus)
    sampler = CpuSampler()
    sampler.sample()
    base = sampler.totals()
    sampler.start()
    cfg = parse_pipeline({"stages": ["match", "balance"],
                          "pool": {"shard_size": args.shard_size},
                          "run": {"num_cpus": args.cpus},
                          "match": {"metadata": "default"}}, "bench")
    c0 = time.process_time()
    time.sleep(args.idle)  # what Ray's threads in the driver burn with nothing to do
    idle = (time.process_time() - c0) / args.idle
    calls: list[dict[str, Any]] = []
    saves: list[float] = []
    marks: dict[str, Any] = {}
    instrument(calls, saves, sampler, marks)
    # the main thread's CPU, not wall: time blocked in ray.wait is not the driver's work
    prof = cProfile.Profile(time.thread_time) if args.profile else None
    w, c, t = time.perf_counter(), time.process_time(), time.thread_time()
    if prof:
        prof.enable()
    manifest = run_pipeline(cfg, args.out, pool=args.pool)
    if prof:
        prof.disable()
    wall, cpu, thread = (time.perf_counter() - w, time.process_time() - c,
                         time.thread_time() - t)
    sampler.halt.set()
    sampler.join()
    sampler.sample()
    cpus = {k: v - base[k] for k, v in sampler.totals().items()}
    calls = list(calls)  # the pipeline's, not the floor's below
    sizes = {}
    for folder in ("pool", "match", "balance"):
        d = os.path.join(args.out, folder)
        files = [f for f in os.listdir(d) if f.startswith("part-")]
        sizes[folder] = sum(os.path.getsize(os.path.join(d, f)) for f in files)
    shards = sorted(os.listdir(os.path.join(args.out, "pool")))
    shards = [s for s in shards if s.startswith("part-")]
    result: dict[str, Any] = {
        "shards": len(shards), "wall": wall, "cpu": cpu, "thread": thread, "ray_cpu": cpus,
        "idle_cpu_per_s": idle, "workers": sum(1 for k, _ in sampler.last.values()
                                               if k == "worker"),
        "ingest": marks["ingest"], "bytes": sizes,
        "ingest_ray": {k: v - base[k] for k, v in marks["ingest_ray"].items()},
        "calls": calls, "saves": len(saves), "save_s": sum(saves),
        "run_json_bytes": os.path.getsize(os.path.join(args.out, "run.json")),
        "ingest_s": manifest["timings"]["ingest"], "peak_rss_mb": peak_rss_mb(),
        "stages": {n: {k: st.get(k) for k in ("seconds", "worker_seconds", "rows_in", "kept")}
                   for n, st in manifest["stages"].items()}}
    if prof:
        prof.dump_stats(args.result + ".prof")
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.profile_top)
        result["driver_profile"] = buf.getvalue()
    if len(shards) >= 100:
        result["floor"] = engine_floor(len(shards), sampler)
        result["wait_us"] = wait_scaling([2, 64, 512, 6400])
    if args.sample:
        result["worker_side"] = worker_side(cfg, args.out, shards, args.sample,
                                            args.profile_top)
    with open(args.result, "w") as f:
        json.dump(result, f)
    engine.shutdown()


# ----------------------------------------------------------------------------- parent
STAGE_CALLS = ("match", "balance", "balance.count")  # the engine calls of the stages' steps


def run_child(args: argparse.Namespace, pool: str, work: str, label: str, shard_size: int,
              sample: int, profile: bool) -> dict[str, Any]:
    out, res = os.path.join(work, f"run-{label}"), os.path.join(work, f"{label}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--pool", pool, "--out", out,
           "--result", res, "--shard-size", str(shard_size), "--cpus", str(args.cpus),
           "--sample", str(sample), "--profile-top", str(args.profile_top),
           "--idle", str(args.idle)]
    if profile:
        cmd.append("--profile")
    env = dict(os.environ, RAY_AUTH_MODE="disabled",
               CURATE_RAY_TMP=tempfile.mkdtemp(prefix="bdr-", dir="/tmp"))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    shutil.rmtree(env["CURATE_RAY_TMP"], ignore_errors=True)
    if r.returncode != 0 or not os.path.exists(res):
        sys.exit(f"{label} run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    with open(res) as f:
        result = json.load(f)
    result["steps"] = sum(c["items"] for c in result["calls"] if c["desc"] in STAGE_CALLS)
    stage = {k: result[k] - result["ingest"][k] for k in ("wall", "cpu", "thread")}
    stage["worker"] = result["ray_cpu"]["worker"] - result["ingest_ray"]["worker"]
    stage["system"] = result["ray_cpu"]["system"] - result["ingest_ray"]["system"]
    result["stage"] = stage
    return result


def print_run(label: str, r: dict[str, Any], pairs: int) -> None:
    st, ing = r["stage"], r["ingest"]
    print(f"\n{label}: {r['shards']:,} shards, {pairs:,} pairs, {r['steps']:,} shard-steps; "
          f"wall {r['wall']:.1f} s (ingest {ing['wall']:.1f}, stages {st['wall']:.1f}); "
          f"driver CPU {r['cpu']:.2f} s (main thread {r['thread']:.2f}); Ray workers CPU "
          f"{r['ray_cpu']['worker']:.1f} s, Ray system CPU {r['ray_cpu']['system']:.1f} s; "
          f"run.json saved {r['saves']} times ({r['save_s'] * 1e3:.0f} ms in all), "
          f"{r['run_json_bytes'] / 1024:.1f} KB; driver peak RSS {r['peak_rss_mb']:.0f} MB; "
          f"{r['workers']} Ray worker processes; the idle driver burns "
          f"{r['idle_cpu_per_s'] * 1e3:.0f} ms CPU per s (Ray's threads)")
    print("| engine call | items | wall s | driver CPU s | main thread s | driver CPU ms/item |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in r["calls"]:
        print(f"| {c['desc']} | {c['items']:,} | {c['wall']:.2f} | {c['cpu']:.2f} | "
              f"{c['thread']:.2f} | {c['cpu'] / max(c['items'], 1) * 1e3:.2f} |")
    out_cpu = r["cpu"] - sum(c["cpu"] for c in r["calls"])
    out_thr = r["thread"] - sum(c["thread"] for c in r["calls"])
    print(f"| outside engine calls (ingest's and the stages' driver work) | | | {out_cpu:.2f} "
          f"| {out_thr:.2f} | |")
    print("  shard files, bytes per pair: " + ", ".join(
        f"{k} {v / pairs:.1f}" for k, v in r["bytes"].items()))
    for name, s in r["stages"].items():
        ws = s.get("worker_seconds") or {}
        print(f"  {name}: stage wall {s['seconds']:.1f} s; worker seconds of its shard step: "
              + ", ".join(f"{k} {v:.1f}" for k, v in ws.items()))
    for c in r["calls"]:
        if c.get("median_ms"):
            print(f"  {c['desc']}: {c['outcome_bytes']:,.0f} bytes of driver memory per "
                  "shard's outcome until the step ends; median shard " + ", ".join(
                f"{k} {v:.2f} ms" for k, v in c["median_ms"].items()) + "; seconds above the "
                "median, all shards: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                   c["excess_s"].items()))


def compare(few: dict[str, Any], many: dict[str, Any], cpus: int) -> None:
    d_steps = many["steps"] - few["steps"]
    d_shards = many["shards"] - few["shards"]
    fs, ms = few["stage"], many["stage"]
    print(f"\n| per extra shard-step ({few['shards']} -> {many['shards']:,} shards; "
          f"{d_steps:,} more shard-steps) | few | many | marginal ms |")
    print("|---|---:|---:|---:|")
    rows = [("driver CPU, stages (process)", "cpu"), ("driver CPU, stages (main thread)",
                                                      "thread"),
            ("Ray worker CPU, stages", "worker"), ("Ray system CPU, stages", "system"),
            ("wall, stages", "wall")]
    marg = {}
    for text, k in rows:
        marg[k] = (ms[k] - fs[k]) / d_steps * 1e3
        print(f"| {text} | {fs[k]:.2f} s | {ms[k]:.2f} s | {marg[k]:.2f} |")
    idle = many["idle_cpu_per_s"] * (ms["wall"] - fs["wall"]) / d_steps * 1e3
    print(f"| driver CPU, stages (process) less Ray's idle burn ({idle:.2f}) | | | "
          f"{marg['cpu'] - idle:.2f} |")
    over = marg["wall"] * cpus
    whole = (many["wall"] - few["wall"]) * cpus / d_steps * 1e3
    print(f"| worker-side overhead (cores x wall, stages) | | | {over:.1f} |")
    print(f"| worker-side overhead (cores x wall, whole run as in the issue) | | | {whole:.1f} |")
    ing = {k: (many["ingest"][k] - few["ingest"][k]) / d_shards * 1e3 for k in ("wall", "cpu")}
    print(f"| ingest per extra shard: wall / driver CPU | {few['ingest']['wall']:.1f} s | "
          f"{many['ingest']['wall']:.1f} s | {ing['wall']:.2f} / {ing['cpu']:.2f} |")
    print("\nworker phases per shard-step (run.json worker_seconds / shards), ms:")
    for name in many["stages"]:
        wf = few["stages"][name].get("worker_seconds") or {}
        wm = many["stages"][name].get("worker_seconds") or {}
        parts = [f"{k} {wf.get(k, 0) / few['shards'] * 1e3:.1f} -> "
                 f"{v / many['shards'] * 1e3:.2f}" for k, v in wm.items()]
        print(f"  {name} shard step (few -> many): " + ", ".join(parts))
    goal = WORKER_BEFORE_MS / 2
    print(f"\ndriver: {marg['cpu']:.2f} ms CPU per shard-step (goal <= {DRIVER_GOAL_MS}): "
          f"{'MET' if marg['cpu'] <= DRIVER_GOAL_MS else 'NOT MET'}; worker-side overhead "
          f"per shard-step (goal <= {goal:.0f}, half of {WORKER_BEFORE_MS:.0f}): cores x wall "
          f"{over:.1f} ms ({'MET' if over <= goal else 'NOT MET'}; on a shared machine the "
          f"load inflates it), Ray workers' CPU {marg['worker']:.1f} ms "
          f"({'MET' if marg['worker'] <= goal else 'NOT MET'})")


def print_extras(r: dict[str, Any]) -> None:
    if "floor" in r:
        f = r["floor"]
        print(f"\nengine floor, map_items of a no-op over {f['items']:,} items: wall "
              f"{f['wall_ms']:.2f} ms/item, driver CPU {f['cpu_ms']:.2f} ms/item (main thread "
              f"{f['thread_ms']:.2f}), Ray workers' CPU {f['worker_ms']:.2f} ms/item, Ray "
              f"system CPU {f['system_ms']:.2f} ms/item")
        print("per result with N refs in flight, one finished: ray.wait(refs, num_returns=1)"
              " + the engine's scans of what runs (refs list, oldest, overdue), us: "
              + ", ".join(f"N={int(k):,}: {w:.0f} + {p:.0f}"
                          for k, (w, p) in r["wait_us"].items()))
    ws = r.get("worker_side")
    if ws:
        print(f"\nworker side in-process (no Ray), {ws['shards']} shards, CPU ms per shard "
              "(and the shares of its wall by phase):")
        for step in ("match.shards", "balance.count", "balance.shards"):
            v = ws[step]
            rest = ", ".join(f"{k} {x:.0%}" for k, x in v.items() if k != "ms_per_shard")
            print(f"  {step}: {v['ms_per_shard']:.2f}" + (f" ({rest})" if rest else ""))
        print("  Matcher.match alone, CPU ms per call: " + ", ".join(
            f"{int(n):,} captions {ms:.1f}" for n, ms in ws["matcher_ms"].items()))
        print("\nworker-side cProfile (second sample, by own time):\n" + ws["profile"])
    if "driver_profile" in r:
        print("\ndriver main thread cProfile (whole pipeline, by own time):\n"
              + r["driver_profile"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=4000, help="shards of the many-shard run")
    ap.add_argument("--shard-size", type=int, default=None,
                    help="pairs per shard of the many-shard run (default: pairs / shards)")
    ap.add_argument("--few", type=int, default=10, help="shards of the reference run")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--sample", type=int, default=200,
                    help="shards timed (and as many profiled) in-process, worker side")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the driver during the many-shard run (slows it)")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--idle", type=float, default=3.0,
                    help="s the driver idles after Ray starts (its threads' CPU rate)")
    ap.add_argument("--only-many", action="store_true", help="skip the reference run")
    ap.add_argument("--keep", action="store_true")
    # internal: one run in this (fresh) process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    size = args.shard_size or max(1, args.pairs // args.shards)
    work = tempfile.mkdtemp(prefix="bench-driver-")
    try:
        pool = os.path.join(work, "pool.parquet")
        source = make_pool(pool, args.pairs)
        print(f"bench_driver: {args.pairs:,} pairs ({source}), [match, balance], "
              f"{args.cpus} Ray CPUs; {machine()}; load {os.getloadavg()[0]:.1f}", flush=True)
        few = None
        if not args.only_many:
            few = run_child(args, pool, work, "few", -(-args.pairs // args.few), 1, False)
            print_run("few", few, args.pairs)
        many = run_child(args, pool, work, "many", size, args.sample, args.profile)
        print_run("many", many, args.pairs)
        if few:
            compare(few, many, args.cpus)
            ws = few.get("worker_side") or {}
            if ws:
                n = -(-args.pairs // args.few)
                print(f"reference in-process, one shard of {n:,} pairs, CPU us per pair: "
                      + ", ".join(f"{k} {ws[k]['ms_per_shard'] / n * 1e3:.2f}" for k in
                                  ("match.shards", "balance.count", "balance.shards")))
        print_extras(many)
        print(f"\nbench process peak RSS {peak_rss_mb():.0f} MB; load "
              f"{os.getloadavg()[0]:.1f}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
