"""Benchmark: MetaCLIP matching and balancing, against MetaCLIP's own per-caption method.

    python bench/bench_match.py [--reps 2] [--naive 2000] [--pairs 1000000]

Captions: shared/data Flickr8k (40k) + the 10k web pool's alt texts, repeated to >= 100k
(synthetic captions when shared/ is absent). Vocabulary: the committed default (~460k).
Balancing of 1M matched pairs runs first, so its peak RSS is its own. Then, in one process:
our Matcher vs a per-caption pyahocorasick loop with MetaCLIP's semantics (automaton over
" "+e+" ", iterate spacing(caption), collect a set of ids); outputs must be identical; a
sample against the naive Python loop; pickling costs. Arrow's thread pool is set to 1
thread, so captions/s are per core. Prints a markdown table at the end.
"""

from __future__ import annotations

import argparse
import pickle
import platform
import random
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.algorithms.balancing import count_entries, draw_kept, keep_prob  # noqa: E402
from curate.algorithms.matching import Matcher, naive_match, spacing  # noqa: E402
from curate.vocab import load_vocabulary  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ROWS: list[tuple[str, str, str]] = []


def peak_rss_mb() -> float:
    """Peak RSS (VmHWM) since the last reset_peak_rss(), else since start (getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def report(name: str, value: str, note: str = "") -> None:
    ROWS.append((name, value, note))
    print(f"{name:<44} {value:>18}  {note}", flush=True)


def load_captions(reps: int) -> list[str]:
    flickr = SHARED / "captions" / "flickr8k_captions.parquet"
    pool = SHARED / "pools" / "web_alt_text_10k.parquet"
    if flickr.is_file() and pool.is_file():
        caps = pq.read_table(flickr, columns=["caption"]).column(0).to_pylist()
        caps += pq.read_table(pool, columns=["TEXT"]).column(0).to_pylist()
    else:
        print("shared/data not found: synthetic captions", flush=True)
        rng = random.Random(0)
        words = "a dog cat man woman runs in the park red car on street with New York".split()
        caps = [" ".join(rng.choices(words, k=rng.randint(3, 15))) + "." for _ in range(50_000)]
    return caps * reps


def metaclip_loop(automaton, texts):
    """MetaCLIP's substr_matching: one automaton pass per spaced caption, ids in a set."""
    out = []
    for text in texts:
        ids = set()
        for _end, (entry_id, _key) in automaton.iter(spacing(text)):
            ids.add(entry_id)
        out.append(list(ids))
    return out


def bench_matching(args) -> None:
    reset_peak_rss()
    texts = load_captions(args.reps)
    vocab = load_vocabulary("default")
    report("captions", f"{len(texts):,}", f"mean {np.mean([len(t) for t in texts]):.0f} chars")
    report("vocabulary entries", f"{len(vocab):,}", "default vocabulary")

    with Timer() as t:
        matcher = Matcher(vocab)
    report("build Matcher (tokens)", f"{t.wall:.2f} s", f"RSS now {rss_mb():.0f} MB")
    with Timer() as t:
        blob = pickle.dumps(matcher, protocol=pickle.HIGHEST_PROTOCOL)
    with Timer() as t2:
        pickle.loads(blob)
    report("pickle Matcher (tokens)", f"{len(blob) / 2**20:.0f} MB",
           f"dump {t.wall:.2f} s, load {t2.wall:.3f} s")
    del blob

    matcher.match(texts[:2000])  # warm-up
    with Timer() as t:
        ours = matcher.match(texts)
    ours_rate, ours_cpu = len(texts) / t.wall, len(texts) / t.cpu
    report("ours (tokens engine)", f"{ours_rate:,.0f} cap/s",
           f"cpu {ours_cpu:,.0f} cap/s, peak RSS {peak_rss_mb():.0f} MB")
    ours = ours.to_pylist()

    with Timer() as t:
        ac_matcher = Matcher(vocab, engine="ahocorasick")
    report("build Matcher (ahocorasick)", f"{t.wall:.2f} s", f"RSS now {rss_mb():.0f} MB")
    with Timer() as t:
        ours_ac = ac_matcher.match(texts)
    report("ours (joined ahocorasick engine)", f"{len(texts) / t.wall:,.0f} cap/s",
           f"cpu {len(texts) / t.cpu:,.0f} cap/s")
    assert ours_ac.to_pylist() == ours, "engines disagree"
    with Timer() as t:
        blob = pickle.dumps(ac_matcher, protocol=pickle.HIGHEST_PROTOCOL)
    with Timer() as t2:
        pickle.loads(blob)
    report("pickle Matcher (ahocorasick)", f"{len(blob) / 2**20:.0f} MB",
           f"dump {t.wall:.2f} s, load {t2.wall:.3f} s")
    del blob, ac_matcher, ours_ac

    with Timer() as t:
        automaton = ahocorasick.Automaton()
        for i, e in enumerate(vocab):
            automaton.add_word(" " + e + " ", (i, " " + e + " "))
        automaton.make_automaton()
    report("build MetaCLIP automaton", f"{t.wall:.2f} s", f"RSS now {rss_mb():.0f} MB")
    metaclip_loop(automaton, texts[:2000])  # warm-up
    with Timer() as t:
        loop = metaclip_loop(automaton, texts)
    loop_rate, loop_cpu = len(texts) / t.wall, len(texts) / t.cpu
    report("MetaCLIP per-caption loop", f"{loop_rate:,.0f} cap/s",
           f"cpu {loop_cpu:,.0f} cap/s, peak RSS {peak_rss_mb():.0f} MB")
    assert [sorted(x) for x in loop] == ours, "ours != MetaCLIP loop"
    report("identical to MetaCLIP loop", "yes",
           f"{sum(map(len, ours)):,} matches, {sum(1 for x in ours if x):,} captions matched")
    report("speed-up vs MetaCLIP loop", f"{ours_rate / loop_rate:.2f}x",
           f"cpu time ratio {ours_cpu / loop_cpu:.2f}x")
    del automaton, loop

    sample = random.Random(0).sample(texts, args.naive)
    with Timer() as t:
        naive = naive_match(sample, vocab)
    with Timer() as t2:
        ours_sample = matcher.match(sample).to_pylist()
    assert naive == ours_sample, "ours != naive"
    report(f"naive Python loop ({args.naive:,} captions)", f"{len(sample) / t.wall:,.1f} cap/s",
           f"ours on the same sample {len(sample) / t2.wall:,.0f} cap/s; identical")


def bench_balancing(args) -> None:
    n_entries = 500_000
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, n_entries + 1)
    weights /= weights.sum()
    per_row = rng.integers(1, 5, size=args.pairs)
    ids = rng.choice(n_entries, size=int(per_row.sum()), p=weights).astype(np.int32)
    offsets = np.concatenate(([0], np.cumsum(per_row))).astype(np.int32)
    entry_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
    raw = rng.integers(0, 2**63, size=(args.pairs, 2), dtype=np.int64)
    uids = pa.array([f"{a:016x}{b:016x}" for a, b in raw.tolist()])
    del raw, per_row, offsets, weights
    base = rss_mb()
    reset_peak_rss()
    with Timer() as t:
        counts = count_entries(entry_ids, n_entries)
    report(f"count_entries ({args.pairs:,} pairs)", f"{t.wall * 1000:.0f} ms",
           f"{len(ids):,} matches")
    with Timer() as t:
        p = keep_prob(entry_ids, counts, 20)
    report("keep_prob", f"{t.wall * 1000:.0f} ms", f"expected kept {p.sum():,.0f}")
    with Timer() as t:
        kept = draw_kept(uids, entry_ids, counts, 20, seed=0)
    report("draw_kept", f"{t.wall * 1000:.0f} ms",
           f"kept {kept.sum():,}, {args.pairs / t.wall:,.0f} pairs/s")
    report("balancing peak RSS", f"{peak_rss_mb():.0f} MB",
           f"of the three calls; RSS before them {base:.0f} MB (inputs, Python, Arrow)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="caption set repetitions")
    parser.add_argument("--naive", type=int, default=2000, help="naive-loop sample size")
    parser.add_argument("--pairs", type=int, default=1_000_000, help="balancing pairs")
    args = parser.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    print(f"{platform.machine()}, python {platform.python_version()}, numpy {np.__version__}, "
          f"pyarrow {pa.__version__}, pyahocorasick {version('pyahocorasick')}", flush=True)
    bench_balancing(args)  # first, so its peak RSS is not the matching's
    bench_matching(args)
    print("\n| measure | value | note |\n|---|---|---|")
    for name, value, note in ROWS:
        print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
