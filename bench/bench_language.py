"""Benchmark: language ID captions/s on one core, the `language` stage vs a bare fastText loop.

    python bench/bench_language.py [--captions 200000] [--reps 5] [--shard-size 10000]

Captions: shared/data's Flickr8k (40k) + the 10k web pool's alt texts, repeated to
``--captions`` (synthetic multilingual captions when shared/ is absent). Model: the bundled
lid.176.ftz. Three figures, each the best of ``--reps`` rounds that run the three in turn
(so load from other processes on a shared machine hits them alike), all on one core (Arrow
pinned to 1 thread; fastText is single-threaded):

- bare: ``model.predict(text.replace("\\n", " "))`` per caption, DataComp's call;
- stage process: ``LanguageStage.process`` on in-memory shards (what the stage adds: Arrow
  to Python strings, the C++ predict entry point, the output table);
- stage shards: the stage's whole shard step (``run_inline``: read the pool shard, process,
  write ``language/part-*.parquet`` with its footer), i.e. what a worker does.

Labels of the stage must equal the bare loop's (checked). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine, peak_rss_mb, timed  # noqa: E402

from curate.models import langid  # noqa: E402
from curate.stages.base import StageSpec  # noqa: E402
from curate.stages.language import LanguageStage  # noqa: E402
from curate.stages.registry import parse_pipeline  # noqa: E402
from curate.stages.runtime import build, run_inline  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def captions(n: int) -> tuple[list[str], str]:
    caps: list[str] = []
    flickr = SHARED / "captions" / "flickr8k_captions.parquet"
    web = SHARED / "pools" / "web_alt_text_10k.parquet"
    if flickr.is_file() and web.is_file():
        caps += pq.read_table(flickr, columns=["caption"])["caption"].to_pylist()
        caps += [c for c in pq.read_table(web, columns=["TEXT"])["TEXT"].to_pylist() if c]
        source = "shared/data Flickr8k + web alt text"
    else:
        rng = random.Random(0)
        words = ["the", "dog", "runs", "Hund", "läuft", "le", "chien", "court", "собака",
                 "бежит", "犬が", "走る", "beach", "Strand", "plage", "пляж"]
        caps = [" ".join(rng.choices(words, k=rng.randint(2, 12))) for _ in range(50_000)]
        source = "synthetic"
    out = (caps * (n // len(caps) + 1))[:n]
    return out, source


def bare(model, texts: list[str]) -> list[str]:
    return [model.predict(t.replace("\n", " "))[0][0][9:] for t in texts]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shard-size", type=int, default=10_000)
    args = ap.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    texts, source = captions(args.captions)
    n = len(texts)
    model = langid.load(str(langid.resolve(None)))
    rss0 = peak_rss_mb()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        (run / "pool").mkdir(parents=True)
        shards = []
        for j, lo in enumerate(range(0, n, args.shard_size)):
            name = f"part-{j:05d}.parquet"
            chunk = texts[lo:lo + args.shard_size]
            pq.write_table(pa.table({"uid": [f"{lo + i:032x}" for i in range(len(chunk))],
                                     "caption": chunk}), run / "pool" / name)
            shards.append(name)
        cfg = parse_pipeline({"stages": ["language"]})
        spec = StageSpec("language", str(run), cfg.dump(), cfg.fingerprints()["language"])
        stage = build(spec, LanguageStage)
        run_inline(stage, shards[:1])  # the model step; warms the model cache
        tables = [stage.inputs(s) for s in shards]

        def process() -> list[str]:
            out: list[str] = []
            for s, t in zip(shards, tables):
                out += stage.process(s, t)["lang"].to_pylist()
            return out

        def shard_step() -> None:
            for p in (run / "language").glob("part-*.parquet"):
                p.unlink()  # no resume: every shard is processed again
            run_inline(build(spec, LanguageStage), shards)

        t_bare = t_proc = t_step = float("inf")
        for _ in range(args.reps):
            t, ref = timed(lambda: bare(model, texts))
            t_bare = min(t_bare, t)
            t, labels = timed(process)
            t_proc = min(t_proc, t)
            assert labels == ref, "stage labels differ from the bare fastText loop"
            t_step = min(t_step, timed(shard_step)[0])

    rows = [("bare fastText loop (predict per caption)", t_bare),
            ("language stage: process()", t_proc),
            ("language stage: shard step (read + process + write)", t_step)]
    print(f"\n{n:,} captions ({source}); {machine()}; model {langid.LITE_NAME}; "
          f"best of {args.reps}; one core\n")
    print("| what | captions/s | vs bare |")
    print("|---|---:|---:|")
    for what, t in rows:
        print(f"| {what} | {n / t:,.0f} | {t_bare / t:.2f}x |")
    print(f"\npeak RSS: {peak_rss_mb():,.0f} MB (after loading captions and model: "
          f"{rss0:,.0f} MB)")


if __name__ == "__main__":
    main()
