"""Benchmark of ``curate index`` against autofaiss 2.18.0's ``build_index`` (the library
clip-retrieval built LAION-5B's kNN indices with), and query latency at 1M+ vectors.

Data: ``--n`` unit vectors in ``--d`` dims shaped like web embeddings: families of 3-10
near-copies (cosine ~0.98 among them) around 1,000 topics, generated in chunks and stored
as float16 (as ``scores/`` stores embeddings). Compared in one process, on the same data,
with the same memory budget (``--memory``, one comparison per value):

- ours: the whole ``curate index RUN --pairs all --memory B`` path (engine tasks reading a
  run's pool shards: count, sample, train, parts, merge, tune, recall) on a run made of the
  pool (pipeline ``[emit]``); Ray is started before the clock;
- autofaiss: ``build_index(x, max_index_memory_usage=B, current_memory_available="16G",
  metric_type="ip", nb_cores=2, save_on_disk=False)`` on the same vectors as a float32
  array (its own choice of index and of search settings: 10 ms a query, 20 neighbours).

Both are scored against exact search (NumPy, the query's own row left out) on the same
``--queries`` rows: recall@10 = the share of the true 10 nearest others among the 10
returned (10-recall@10), and 1-recall@10 = how often the true nearest is among them (the PQ
literature's recall@10). Query latency: one query at a time, p50/p99 over the same rows.
``--latency N``: our index alone at N vectors (built with :mod:`curate.algorithms.ann` from
chunks, ``--kind``, trained on ``--train`` rows), the search the explore app runs
(:class:`curate.app.index.Neighbours`), FAISS held to ``--threads`` threads.

autofaiss needs faiss-cpu, which shares the module name ``faiss`` with curate's faiss-gpu,
and numpy<2: install it and its small pure-Python dependencies without theirs, outside the
venv, and put them on the path::

    pip download --no-deps -d /tmp/pkgs autofaiss==2.18.0 embedding-reader==1.8.1 \\
        fire==0.6.0 six==1.17.0 termcolor==2.5.0
    pip install --no-deps --target /tmp/benchdeps /tmp/pkgs/*
    PYTHONPATH=/tmp/benchdeps python bench/bench_index.py --n 100000 --memory 64MB,12MB
    python bench/bench_index.py --latency 1000000 --kind IVF4096_HNSW32,PQ64x8

(tqdm, pandas, pyarrow and fsspec come with curate.) autofaiss 2.18.0 calls
``faiss.OPQMatrix(d, M=..., d2=...)`` with keywords, which faiss 1.15's wrapper refuses:
the bench passes them positionally (same matrix).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, peak_rss_mb  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg} (peak RSS {peak_rss_mb():,.0f} MB)", flush=True)


def chunk(i: int, size: int, d: int, topics: np.ndarray, seed: int) -> np.ndarray:
    """Rows of chunk ``i``: families of 3-10 near-copies around topics, float16."""
    rng = np.random.default_rng([seed, i])
    sizes = rng.integers(3, 11, size=size // 3 + 1)
    fam = np.repeat(np.arange(len(sizes)), sizes)[:size]
    heads = (topics[rng.integers(0, len(topics), len(sizes))]
             + rng.standard_normal((len(sizes), d), dtype=np.float32) / np.sqrt(d))
    x = heads[fam] + 0.2 * rng.standard_normal((size, d), dtype=np.float32) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[rng.permutation(size)].astype(np.float16)


def topics_of(d: int, seed: int) -> np.ndarray:
    t = np.random.default_rng(seed).standard_normal((1000, d)).astype(np.float32)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(q: np.ndarray, chunks, k: int = 11) -> np.ndarray:
    """Row ids of the exact top-k of ``q`` over ``chunks`` (an iterable of float16 blocks)."""
    from curate.algorithms.ann import exact_topk, merge_topk

    best, first = None, 0
    for x in chunks:
        got = exact_topk(q, unit(x), k, first)
        best = got if best is None else merge_topk([best, got], k)
        first += len(x)
    return best[1]


def recalls(found: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    from curate.algorithms.ann import recall_at_k

    return (recall_at_k(found, truth, rows, 10), recall_at_k(found, truth, rows, 10, of=1))


def latency(search, q: np.ndarray) -> tuple[float, float]:
    times = []
    for v in q:
        t0 = time.perf_counter()
        search(v[None])
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def compare(args, budget: str) -> None:
    import faiss

    from curate.app.index import build_index, open_index
    from curate.core import engine
    from curate.driver import run_pipeline
    from curate.stages.registry import parse_pipeline

    n, d = args.n, args.d
    topics = topics_of(d, args.seed)
    blocks = [chunk(i, min(args.chunk, n - s), d, topics, args.seed)
              for i, s in enumerate(range(0, n, args.chunk))]
    x = np.concatenate(blocks)
    rng = np.random.default_rng(args.seed + 1)
    rows = np.sort(rng.choice(n, args.queries, replace=False))
    q = unit(x[rows])
    truth = exact(q, blocks)
    log(f"data {n:,} x {d} ({budget}), oracle done")
    root = tempfile.mkdtemp(prefix="bench-index-", dir=args.tmp)
    uids = [f"{v:016x}{i:016x}" for i, v in enumerate(rng.integers(0, 2**63, n))]
    pq.write_table(pa.table({"uid": uids, "url": [f"http://x.org/{i}" for i in range(n)],
                             "caption": [f"c{i}" for i in range(n)],
                             "image_emb": pa.FixedSizeListArray.from_arrays(
                                 pa.array(x.reshape(-1)), d)}), f"{root}/pool.parquet")
    engine.init(args.threads)
    cfg = parse_pipeline({"stages": ["emit"], "pool": {"shard_size": args.shard},
                          "run": {"max_retries": 0}})
    run_pipeline(cfg, f"{root}/run", pool=f"{root}/pool.parquet")
    log("run made")
    t0 = time.perf_counter()
    info = build_index(f"{root}/run", "all", budget)
    ours_s = time.perf_counter() - t0
    nb = open_index(f"{root}/run")
    pos = {u: i for i, u in enumerate(uids)}
    found = np.array([[pos[u] for u, _ in hits] + [-1] * (11 - len(hits))
                      for hits in nb.search(q, 11)])
    ours_r = recalls(found, truth, rows)
    faiss.omp_set_num_threads(args.threads)
    ours_lat = latency(lambda v: nb.search(v, 10), q)
    one = info["indexes"]["image"]
    log(f"ours: {one['kind']} nprobe {one['nprobe']} in {ours_s:.1f} s {info['seconds']}")

    import autofaiss

    real = faiss.OPQMatrix
    faiss.OPQMatrix = lambda d_in, M=1, d2=-1: real(d_in, M, d2)  # see the docstring
    xf = unit(x)
    t0 = time.perf_counter()
    index, af = autofaiss.build_index(xf, save_on_disk=False, max_index_memory_usage=budget,
                                      current_memory_available="16G", metric_type="ip",
                                      nb_cores=args.threads, verbose=40)
    af_s = time.perf_counter() - t0
    faiss.OPQMatrix = real
    af_r = recalls(index.search(q, 11)[1], truth, rows)
    faiss.omp_set_num_threads(args.threads)
    af_lat = latency(lambda v: index.search(v, 10), q)
    af_bytes = len(faiss.serialize_index(index))
    log(f"autofaiss: {af['index_key']} {af['index_param']} in {af_s:.1f} s")
    print(f"\n| budget {budget}, {n:,} x {d} | ours | autofaiss | ratio |\n|---|---:|---:|---:|")
    print(f"| index | `{one['kind']}` nprobe {one['nprobe']} | `{af['index_key']}` "
          f"`{af['index_param']}` | |")
    print(f"| build s | {ours_s:.1f} | {af_s:.1f} | {ours_s / af_s:.3f}x |")
    print(f"| recall@10 (10-recall) | {ours_r[0]:.3f} | {af_r[0]:.3f} | "
          f"{ours_r[0] - af_r[0]:+.3f} |")
    print(f"| 1-recall@10 | {ours_r[1]:.3f} | {af_r[1]:.3f} | |")
    print(f"| recall@10 info.json says | {one['recall_at_10']:.3f} | | |")
    print(f"| query p50 / p99 ms | {ours_lat[0]:.2f} / {ours_lat[1]:.2f} | "
          f"{af_lat[0]:.2f} / {af_lat[1]:.2f} | |")
    print(f"| index bytes (budget {info['memory_budget']:,}) | {one['memory_bytes']:,} | "
          f"{af_bytes:,} | |")
    print(f"| peak RSS (process) | {peak_rss_mb():,.0f} MB | | |\n")


def scale(args) -> None:
    """Our index at ``--latency`` vectors, built from chunks (never all in memory)."""
    import faiss

    from curate.algorithms import ann
    from curate.app.index import Neighbours

    n, d = args.latency, args.d
    topics = topics_of(d, args.seed)
    n_chunks = (n + args.chunk - 1) // args.chunk

    def blocks():
        for i in range(n_chunks):
            yield chunk(i, min(args.chunk, n - i * args.chunk), d, topics, args.seed)

    rng = np.random.default_rng(args.seed + 1)
    per = args.train // n_chunks + 1
    t0 = time.perf_counter()
    sample = np.concatenate([b[rng.choice(len(b), min(per, len(b)), replace=False)]
                             for b in blocks()])
    index = ann.train(args.kind, ann.normalise(sample))
    del sample
    log(f"trained {args.kind} on {args.train:,} in {time.perf_counter() - t0:.0f} s")
    first = 0
    for b in blocks():
        ann.add(index, ann.normalise(b), first)
        first += len(b)
    ann.finish(index)
    build_s = time.perf_counter() - t0
    log(f"filled {n:,} in {build_s:.0f} s")
    rows = np.sort(rng.choice(n, args.queries, replace=False))
    q = np.concatenate([unit(b[rows[(rows >= i * args.chunk) & (rows < (i + 1) * args.chunk)]
                                - i * args.chunk]) for i, b in enumerate(blocks())])
    truth = exact(q, blocks())
    tune = np.arange(0, len(rows), 4)
    nprobe, ladder = ann.tune_nprobe(index, q[tune], truth[tune], rows[tune], 10, 0.95)
    ann.set_nprobe(index, nprobe)
    found = ann.search(index, q, 11)[1]
    r = recalls(found, truth, rows)
    nb = Neighbours(index, pa.array([f"{i:032x}" for i in range(n)]), {})
    faiss.omp_set_num_threads(args.threads)
    lat = latency(lambda v: nb.search(v, 10), q)
    size = len(faiss.serialize_index(index))
    print(f"\n| {n:,} x {d}, `{args.kind}`, nprobe {nprobe} (ladder {ladder}) | |\n|---|---:|")
    print(f"| build s (train {args.train:,} + fill) | {build_s:.0f} |")
    print(f"| recall@10 / 1-recall@10 ({len(rows)} queries) | {r[0]:.3f} / {r[1]:.3f} |")
    print(f"| query p50 / p99 ms, {args.threads} threads | {lat[0]:.2f} / {lat[1]:.2f} |")
    print(f"| index bytes | {size:,} (estimate {ann.estimate_bytes(args.kind, n, d):,}) |")
    print(f"| peak RSS | {peak_rss_mb():,.0f} MB |\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--memory", default="64MB,12MB", help="budgets, comma-separated")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=100_000)
    p.add_argument("--shard", type=int, default=25_000, help="pool shard size (ours)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency", type=int, default=0, help="N: our index alone at N vectors")
    p.add_argument("--kind", default="IVF4096_HNSW32,PQ64x8")
    p.add_argument("--train", type=int, default=200_000)
    p.add_argument("--tmp", default=None)
    args = p.parse_args()
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.1f}")
    if args.latency:
        scale(args)
        return
    for budget in args.memory.split(","):
        compare(args, budget)


if __name__ == "__main__":
    main()
