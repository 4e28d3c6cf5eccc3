"""Benchmark: caption toxicity captions/s, the `toxicity` stage vs alt-profanity-check bare.

    python bench/bench_toxicity.py [--captions 200000] [--reps 3] [--shard-size 10000]

Captions: shared/data's Flickr8k (40k) + the 10k web pool's alt texts, repeated to
``--captions`` (synthetic captions when shared/ is absent). Three figures, each the best
of ``--reps`` rounds that run the three in turn (so load from other processes on a shared
machine hits them alike), all on one core (Arrow pinned to 1 thread; scikit-learn's TF-IDF
and sparse products are single-threaded):

- bare: ``profanity_check.predict_prob(texts)`` once per shard-sized batch, the package's
  own call (it adds ``np.apply_along_axis`` over the probabilities);
- stage process: ``ToxicityStage.process`` on in-memory shards (Arrow to Python strings,
  one ``transform`` + ``predict_proba`` per shard, the decision columns);
- stage shards: the stage's whole shard step (``run_inline``: read the pool shard, process,
  write ``toxicity/part-*.parquet`` with its footer), i.e. what a worker does.

Scores of the stage must equal the bare call's (as float32, checked). Prints one markdown
table and peak RSS.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine, peak_rss_mb, timed  # noqa: E402

from curate.models import toxicity  # noqa: E402
from curate.stages.base import StageSpec  # noqa: E402
from curate.stages.registry import parse_pipeline  # noqa: E402
from curate.stages.runtime import build, run_inline  # noqa: E402
from curate.stages.toxicity import ToxicityStage  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def captions(n: int) -> tuple[list[str], str]:
    flickr = SHARED / "captions" / "flickr8k_captions.parquet"
    web = SHARED / "pools" / "web_alt_text_10k.parquet"
    if flickr.is_file() and web.is_file():
        caps = pq.read_table(flickr, columns=["caption"])["caption"].to_pylist()
        caps += [c for c in pq.read_table(web, columns=["TEXT"])["TEXT"].to_pylist()
                 if c and c.strip()]
        source = "shared/data Flickr8k + web alt text"
    else:
        rng = random.Random(0)
        words = ["a", "dog", "runs", "on", "the", "beach", "red", "mug", "sale", "stupid",
                 "photo", "of", "woman", "city", "night", "idiot", "sunset", "table"]
        caps = [" ".join(rng.choices(words, k=rng.randint(2, 12))) for _ in range(50_000)]
        source = "synthetic"
    return (caps * (n // len(caps) + 1))[:n], source


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=10_000)
    args = ap.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    texts, source = captions(args.captions)
    n, size = len(texts), args.shard_size
    import profanity_check  # loads the package's model at import

    toxicity.load()
    rss0 = peak_rss_mb()

    def bare() -> np.ndarray:
        return np.concatenate([profanity_check.predict_prob(texts[lo:lo + size])
                               for lo in range(0, n, size)])

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        (run / "pool").mkdir(parents=True)
        shards = []
        for j, lo in enumerate(range(0, n, size)):
            name = f"part-{j:05d}.parquet"
            chunk = texts[lo:lo + size]
            pq.write_table(pa.table({"uid": [f"{lo + i:032x}" for i in range(len(chunk))],
                                     "caption": chunk}), run / "pool" / name)
            shards.append(name)
        cfg = parse_pipeline({"stages": ["toxicity"]})
        spec = StageSpec("toxicity", str(run), cfg.dump(), cfg.fingerprints()["toxicity"])
        stage = build(spec, ToxicityStage)
        tables = [stage.inputs(s) for s in shards]

        def process() -> np.ndarray:
            return np.concatenate([stage.process(s, t)["ptoxic"].to_numpy()
                                   for s, t in zip(shards, tables)])

        def shard_step() -> None:
            for p in (run / "toxicity").glob("part-*.parquet"):
                p.unlink()  # no resume: every shard is processed again
            run_inline(build(spec, ToxicityStage), shards)

        t_bare = t_proc = t_step = float("inf")
        for _ in range(args.reps):
            t, ref = timed(bare)
            t_bare = min(t_bare, t)
            t, got = timed(process)
            t_proc = min(t_proc, t)
            assert np.array_equal(got, ref.astype(np.float32)), "stage differs from predict_prob"
            t_step = min(t_step, timed(shard_step)[0])

    rows = [("bare profanity_check.predict_prob (one call per shard)", t_bare),
            ("toxicity stage: process()", t_proc),
            ("toxicity stage: shard step (read + process + write)", t_step)]
    print(f"\n{n:,} captions ({source}); {machine()}; alt-profanity-check "
          f"{toxicity.VERSION}; shards of {size:,}; best of {args.reps}; one core\n")
    print("| what | captions/s | vs bare |")
    print("|---|---:|---:|")
    for what, t in rows:
        print(f"| {what} | {n / t:,.0f} | {t_bare / t:.2f}x |")
    print(f"\nshare of these captions with ptoxic > 0.5: {float(np.mean(ref > 0.5)):.2%}")
    flickr = SHARED / "captions" / "flickr8k_captions.parquet"
    if flickr.is_file():  # benign human captions: a false-positive rate on real text
        caps = pq.read_table(flickr, columns=["caption"])["caption"].to_pylist()
        s = toxicity.ptoxic(caps)
        got = {"n": len(caps), **{f"above_{t}": round(float(np.mean(s > t)), 4)
                                  for t in (0.5, 0.8, 0.9)}}
        same = "matches" if got == toxicity.QUALITY["flickr8k"] else "DIFFERS FROM"
        print(f"Flickr8k (benign) flagged: {got} ({same} QUALITY['flickr8k'])")
    print(f"peak RSS: {peak_rss_mb():,.0f} MB (after loading captions and both copies of "
          f"the model: {rss0:,.0f} MB)")


if __name__ == "__main__":
    main()
