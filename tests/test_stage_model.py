"""The stage model: global steps gate later stages, every step fails the same way, a filter
written in one module (here, inside the test) runs twice in one pipeline."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import embedding_pool, read_parts, write_vocab
from typer.testing import CliRunner

from curate.cli import app
from curate.core.rundir import step_info
from curate.driver import run_pipeline
from curate.errors import FailedShardsError


def _pipeline(tmp_path, **over):
    vocab = write_vocab(tmp_path)
    sections = dict(
        stages=["score", "match", "balance", "prune", "emit", "report"],
        pool={"shard_size": 40},
        score={"filter": {"top_fraction": 0.5}},
        match={"metadata": vocab}, balance={"t": 25, "seed": 0},
        prune={"k": 3, "niter": 5, "dedup_eps": 0.002, "dbp": True, "target_fraction": 0.8},
        emit={"rows_per_shard": 30, "webdataset": True})
    sections.update(over)
    return base_config(**sections)


def test_failing_score_shard_blocks_top_fraction_then_rerun_applies_it(tmp_path, ray_session,
                                                                       monkeypatch):
    """One score shard fails for good while max_failed_fraction tolerates it: the global cut
    cannot run, so nothing after score runs and the run is not a success; once the fault is
    gone a rerun applies the cut over the whole pool."""
    pool = embedding_pool(tmp_path / "pool.parquet", 160, seed=3)
    cfg = _pipeline(tmp_path, run={"max_retries": 0, "num_cpus": 2,
                                   "max_failed_fraction": 0.5})
    out = tmp_path / "run"
    monkeypatch.setenv("CURATE_FAULT", "score:2:raise")
    with pytest.raises(FailedShardsError, match="top fraction|select0|needs every shard"):
        run_pipeline(cfg, str(out), pool=pool)
    m = json.loads((out / "run.json").read_text())
    assert m["stages"]["score"]["status"] == "incomplete"
    assert all(m["stages"][s]["status"] == "blocked" for s in ("match", "balance", "emit"))
    assert not (out / "match").exists() and not (out / "curated").exists()

    monkeypatch.delenv("CURATE_FAULT")
    run_pipeline(cfg, str(out), pool=pool)
    s = read_parts(out / "scores")
    scored = s.filter(pc.is_valid(s["clip_score"]))
    # an independent oracle, DataComp's get_threshold (the default rule): the score at
    # index int(n * f) of the descending scores, and every pair at or above it
    scores = scored["clip_score"].to_numpy()
    threshold = np.sort(scores)[::-1][int(0.5 * scored.num_rows)]
    assert scored.num_rows == 160
    assert s.filter(s["kept"])["uid"].to_pylist() == scored.filter(
        pa.array(scores >= threshold))["uid"].to_pylist()
    assert pc.sum(s["kept"]).as_py() == 81  # int(160 * 0.5) + 1: no ties here
    assert set(s.filter(pc.invert(s["kept"]))["reason"].to_pylist()) == {"below_top_fraction"}


# Every global step of this pipeline, in the order it runs; a fault in a step's map or in
# its commit must end the run with exit 3 and one line, and the next run resumes.
STEPS = ["score.model", "score.select0", "score.select1", "score.apply", "match.vocabulary",
         "balance.count", "prune.count", "prune.sample", "prune.train", "prune.assign",
         "prune.dedup", "prune.dbp_sample",
         "prune.dbp_train", "prune.dbp_assign", "prune.clusters", "prune.select",
         "prune.cleanup", "emit.count", "emit.write",
         "report.plan", "report.count"]
#: steps whose plan has no items: only their commit can fail
NO_ITEMS = {"score.model", "match.vocabulary", "prune.clusters", "prune.cleanup",
            "report.plan"}


def test_fault_in_every_global_step_exits_3_with_one_line(tmp_path, ray_session,
                                                         monkeypatch):
    pool = embedding_pool(tmp_path / "pool.parquet", 160, seed=5)
    yaml = tmp_path / "p.yaml"
    cfg = _pipeline(tmp_path, run={"max_retries": 0, "num_cpus": 2})
    yaml.write_text(json.dumps(cfg.dump()))
    clean = tmp_path / "clean"
    run_pipeline(cfg, str(clean), pool=pool)

    out = tmp_path / "faulted"
    faults = [(s, "commit") for s in STEPS] + [(s, "*") for s in STEPS if s not in NO_ITEMS]
    order = {s: i for i, s in enumerate(STEPS)}
    faults.sort(key=lambda f: (order[f[0]], f[1] != "*"))  # map before commit, in order
    for step, where in faults:
        monkeypatch.setenv("CURATE_FAULT", f"{step}:{where}:raise")
        r = CliRunner().invoke(app, ["run", "--pool", pool, "--pipeline", str(yaml),
                                     "--out", str(out)])
        lines = [ln for ln in r.output.strip().splitlines() if ln.startswith("curate: error")]
        assert r.exit_code == 3, (step, where, r.output[-1500:])
        assert len(lines) == 1 and step in lines[0], (step, where, lines)
        m = json.loads((out / "run.json").read_text())
        assert m["stages"][step.split(".")[0]]["status"] == "incomplete"
    monkeypatch.delenv("CURATE_FAULT")
    r = CliRunner().invoke(app, ["run", "--pool", pool, "--pipeline", str(yaml),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output[-2000:]
    a, b = read_parts(clean / "curated"), read_parts(out / "curated")
    assert a.num_rows > 0 and a.equals(b)
    for name in ("stage_summary", "concept_frequency"):  # timings aside, the same
        a, b = (pq.read_table(d / "reports" / f"{name}.parquet") for d in (clean, out))
        keep = [c for c in a.column_names if c != "seconds"]
        assert a.select(keep).equals(b.select(keep)), name


TOY = '''
"""A toy filter: drops captions shorter than min_chars. The whole stage is this module."""
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.config import Section
from curate.stages.base import DECISION_FIELDS, Stage, decisions


class ToyConfig(Section):
    min_chars: int = Field(1, ge=0)


class ToyFilter(Stage):
    kind = "toy_filter"
    folder = "toy"
    decides = True
    Config = ToyConfig
    schema = pa.schema([("uid", pa.string()), ("chars", pa.int32()), *DECISION_FIELDS])
    reasons = {"caption_too_short_toy": "fewer characters than min_chars"}
    pool_columns = ["uid", "caption"]

    def process(self, shard, inputs):
        n = pc.utf8_length(inputs["caption"])
        kept = pc.greater_equal(n, self.section.min_chars)
        return pa.table({"uid": inputs["uid"], "chars": n.cast(pa.int32()),
                         **decisions(kept, pa.array(["caption_too_short_toy"] * len(n)),
                                     pc.cast(n, pa.string()))})
'''


def test_toy_filter_in_one_module_used_twice(tmp_path, ray_session):
    module = tmp_path / "toy_filter.py"
    module.write_text(textwrap.dedent(TOY))
    kind = f"{module}:ToyFilter"
    vocab = write_vocab(tmp_path)
    pool = embedding_pool(tmp_path / "pool.parquet", 100, seed=2, text=False)
    lens = np.array([len(c) for c in pq.read_table(pool)["caption"].to_pylist()])
    lo, hi = int(np.percentile(lens, 25)), int(np.percentile(lens, 60))
    cfg = base_config(stages=["short_a", "match", "short_b", "balance", "emit", "report"],
                      pool={"shard_size": 25},
                      short_a={"kind": kind, "min_chars": lo},
                      short_b={"kind": kind, "min_chars": hi},
                      match={"metadata": vocab}, balance={"t": 1000})
    out = tmp_path / "run"
    m = run_pipeline(cfg, str(out), pool=pool)
    drop_a = int((lens < lo).sum())
    drop_b = int(((lens >= lo) & (lens < hi)).sum())
    assert drop_a > 0 and drop_b > 0
    assert m["stages"]["short_a"]["dropped"] == {"caption_too_short_toy": drop_a}
    assert m["stages"]["short_b"]["dropped"] == {"caption_too_short_toy": drop_b}
    # each instance has its own folder, view, decisions and report rows
    assert (out / "short_a").is_dir() and (out / "short_b").is_dir()
    r = CliRunner().invoke(app, ["query", str(out), "SELECT dropped_by, reason, count(*) AS n "
                                 "FROM decisions WHERE NOT kept GROUP BY ALL ORDER BY 1",
                                 "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.output.strip().splitlines()]
    by = {(x["dropped_by"], x["reason"]): x["n"] for x in rows}
    assert by[("short_a", "caption_too_short_toy")] == drop_a
    assert by[("short_b", "caption_too_short_toy")] == drop_b
    summary = pq.read_table(out / "reports" / "stage_summary.parquet").to_pylist()
    counts = {(x["stage"], x["reason"]): x["count"] for x in summary if x["reason"]}
    assert counts[("short_a", "caption_too_short_toy")] == drop_a
    assert counts[("short_b", "caption_too_short_toy")] == drop_b
    page = (out / "reports" / "report.html").read_text()
    assert "short_a" in page and "short_b" in page
    # `curate stage RUN NAME` reruns one instance; nothing changed, nothing is redone: no
    # shard file anywhere in the run is written again, and every short_b shard is skipped
    def files():
        return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes())
                for p in sorted(out.rglob("part-*.parquet"))}

    before = files()
    assert any(k.startswith("short_b/") for k in before)
    r = CliRunner().invoke(app, ["stage", str(out), "short_b"])
    assert r.exit_code == 0, r.output
    assert files() == before
    st = json.loads((out / "run.json").read_text())["stages"]["short_b"]
    assert st["shards_skipped"] == st["shards_total"] == 4
    assert st["dropped"] == {"caption_too_short_toy": drop_b}


def test_two_instances_may_not_share_a_folder(tmp_path):
    from curate.errors import ConfigError

    with pytest.raises(ConfigError, match="uses|rename"):
        base_config(stages=["score", "scores"], scores={"kind": "score"})


UID_SHAPES = ["0123456789abcdef0123456789abcdef", "000012345", "img-000001", "img.0001",
              "a.b.c", "../../x", "a/b", "/abs", ".hidden", "with space", "ünï¢ødé-☃",
              "x" * 200, "tab\there", "semi;colon", "UPPER-ABCDEF0123456789", "-dash", "..",
              "a..b", "q?x=1&y=2", "back\\slash"]


def test_any_uid_survives_ingest_prune_and_webdataset(tmp_path, ray_session):
    """Pool uids of many shapes through ingest, prune with a k-means sample smaller than the
    pool, and emit as WebDataset, read back with `webdataset`: every sample whole, every
    member at the tar's top level, the true uid in its json."""
    import tarfile

    import webdataset as wds

    n = 240
    uids = [f"{UID_SHAPES[i % len(UID_SHAPES)]}#{i}" if i >= len(UID_SHAPES)
            else UID_SHAPES[i] for i in range(n)]
    pool = embedding_pool(tmp_path / "pool.parquet", n, seed=4, uids=uids)
    cfg = base_config(stages=["prune", "emit"], pool={"shard_size": 50},
                      prune={"k": 3, "niter": 5, "sample_size": 30, "dedup_eps": 0.0005},
                      emit={"rows_per_shard": 70, "webdataset": True})
    out = tmp_path / "run"
    m = run_pipeline(cfg, str(out), pool=pool)
    assert step_info(m["stages"]["prune"], "train")["sample"] < n  # the sample really is a sample
    curated = read_parts(out / "curated")
    kept = set(curated["uid"].to_pylist())
    assert kept <= set(uids) and len(kept) == curated.num_rows > 0
    tars = sorted((out / "curated" / "wds").glob("*.tar"))
    seen = []
    for t in tars:
        with tarfile.open(t) as tf:
            for name in tf.getnames():
                assert "/" not in name and not name.startswith(".") and ".." not in name
                assert name.count(".") == 1 and len(name) <= 100, name
        for sample in wds.WebDataset(str(t), shardshuffle=False):
            assert {"txt", "json"} <= set(sample), sample.keys()
            meta = json.loads(sample["json"])
            assert sample["txt"].decode() == meta["caption"]
            seen.append(meta["uid"])
    assert sorted(seen) == sorted(kept)


def test_operational_settings_keep_outputs():
    """More download threads change how the stage runs, not what it writes: same
    fingerprint, nothing discarded; a timeout can change what is fetched: new fingerprint."""
    base = base_config(stages=["download", "match"]).fingerprints()
    more = base_config(stages=["download", "match"],
                       download={"threads": 99, "processes": 3}).fingerprints()
    other = base_config(stages=["download", "match"], download={"timeout": 7}).fingerprints()
    assert base == more and base["download"] != other["download"]


def test_prune_with_a_shard_emptied_by_an_earlier_stage(tmp_path, ray_session):
    """A pool shard whose pairs were all dropped before prune (here: no caption matches the
    vocabulary) must not break the k-means sample or the assignment."""
    import pyarrow as pa

    rng = np.random.default_rng(0)
    n = 60
    x = rng.normal(size=(n, 8)).astype(np.float32)
    caps = [f"a dog #{i}" if i < 40 else f"zzz #{i}" for i in range(n)]
    pq.write_table(pa.table({"caption": caps, "image_emb": pa.FixedSizeListArray.from_arrays(
        pa.array(x.reshape(-1)), 8)}), tmp_path / "pool.parquet")
    cfg = base_config(stages=["match", "balance", "prune", "emit"], pool={"shard_size": 20},
                      match={"metadata": write_vocab(tmp_path)}, balance={"t": 1000},
                      prune={"k": 2, "niter": 3, "dedup_eps": 0.001})
    out = tmp_path / "run"
    m = run_pipeline(cfg, str(out), pool=str(tmp_path / "pool.parquet"))
    assert m["stages"]["balance"]["dropped"] == {"no_metadata_match": 20}
    assert pq.read_table(out / "prune" / "part-00002.parquet").num_rows == 0
    assert read_parts(out / "curated").num_rows == m["stages"]["prune"]["kept"] > 0
