"""The report stage on hand-made run directories (no Ray, no network).

Every shard file and run.json is written here with pyarrow, shaped like the stages' outputs
(docs/ARCHITECTURE.md), so the report's numbers can be checked against a naive recount of the same
files: concept counts, per-stage funnel, ImageNet coverage, and the HTML's shape.
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import read_parts

from curate.algorithms.matching import Matcher, spacing
from curate.config import PipelineConfig
from curate.core.io import shard_index
from curate.report.data import SECTIONS
from curate.report.html import esc
from curate.stages.base import StageSpec
from curate.stages.report import ReportStage, distinct_classes, imagenet_classnames
from curate.stages.runtime import build, run_inline

WORDS = ["goldfish", "tabby cat", "dog", "red car", "tree", "house", "sky", "kite", "umbrella",
         "photo", "car", "crane", "Siamese cat"]
# ImageNet names in captions, including ones the v1 rule cannot or does not match
EXTRA = ["St. Bernard", "Goldfish", "tench", "great white shark", "goldfishes", "crane"]
SHARDS = ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]


def _write(path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _captions(rng: random.Random, n: int) -> list[str]:
    weights = [30, 12, 40, 8, 20, 6, 10, 2, 1, 25, 9, 3, 2]
    out = []
    for i in range(n):
        k = rng.choice([0, 1, 1, 2, 3])
        words = rng.choices(WORDS, weights, k=k)
        if rng.random() < 0.15:
            words.append(rng.choice(EXTRA))
        tail = rng.choice(["", ".", ", nice!", " in the garden"])
        out.append(f"a {' and '.join(words) or 'thing'}{tail} #{i}")
    return out


def _cfg(tmp_path, stages: list[str]) -> dict:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    cfg = PipelineConfig(
        stages=stages, match={"metadata": str(vocab)}, balance={"t": 20, "seed": 0},
        score={"pretrained": "none", "filter": {"min_score": 0.2}},
        download={"user_agent_token": "testbot (+https://example.org/bot)"},
        report={"top_n": 5})
    return cfg.model_dump(mode="json", by_alias=True)


def make_run(tmp_path, stages: list[str], rows_per_shard=(120, 90, 75)) -> dict:
    """A run directory as the stages would leave it; returns its config (JSON)."""
    rng = random.Random(7)
    cfg = _cfg(tmp_path, stages)
    matcher = Matcher(WORDS)
    manifest_stages: dict = {}
    for shard, n in zip(SHARDS, rows_per_shard):
        caps = _captions(rng, n)
        uids = [f"{shard_index(shard):05d}{i:027x}" for i in range(n)]
        _write(tmp_path / "pool" / shard, pa.table({
            "uid": uids, "url": [f"http://127.0.0.1/{u}.jpg" for u in uids], "caption": caps}))
        alive = pa.array(uids)
        if "download" in stages:
            ok = [rng.random() < 0.9 for _ in uids]
            _write(tmp_path / "images" / shard, pa.table({
                "uid": uids, "status": ["ok" if k else "failed" for k in ok],
                "error": [None if k else "404 Not Found" for k in ok], "kept": ok,
                "reason": [None if k else "download_failed" for k in ok],
                "detail": [None if k else rng.choice(["404", "truncated"]) for k in ok]}))
            alive = pa.array([u for u, k in zip(uids, ok) if k])
        if "score" in stages:
            s = np.array([rng.uniform(0.05, 0.4) for _ in range(len(alive))], np.float32)
            kept = s >= 0.2
            _write(tmp_path / "scores" / shard, pa.table({
                "uid": alive, "clip_score": s, "kept": kept,
                "reason": [None if k else "below_min_score" for k in kept]}))
            alive = alive.filter(pa.array(kept))
        if "match" in stages:
            by_uid = dict(zip(uids, caps))
            ids = matcher.match([by_uid[u] for u in alive.to_pylist()])
            _write(tmp_path / "match" / shard, pa.table({"uid": alive, "entry_ids": ids}))
        if "balance" in stages:
            has = pc.greater(pc.list_value_length(ids), 0).to_numpy(zero_copy_only=False)
            kept = np.array([h and rng.random() < 0.6 for h in has])
            _write(tmp_path / "balance" / shard, pa.table({
                "uid": alive, "keep_prob": np.full(len(alive), 0.6, np.float32), "kept": kept,
                "reason": [None if k else ("not_sampled" if h else
                                           "no_metadata_match") for k, h in zip(kept, has)]}))
            alive = alive.filter(pa.array(kept))
        if "prune" in stages:
            m = len(alive)
            kept = np.array([rng.random() < 0.7 for _ in range(m)])
            reason = [None if k else rng.choice(["semantic_duplicate", "over_cluster_quota"])
                      for k in kept]
            _write(tmp_path / "prune" / shard, pa.table({
                "uid": alive, "cluster_id": pa.array([rng.randrange(6) for _ in range(m)],
                                                     pa.int32()),
                "dist_to_centroid": np.random.default_rng(1).random(m).astype(np.float32),
                "duplicate_of": [None] * m, "kept": kept, "reason": reason}))
    if "balance" in stages:
        m = read_parts(tmp_path / "match")
        counts = np.bincount(pc.list_flatten(m["entry_ids"]).to_numpy(), minlength=len(WORDS))
        _write(tmp_path / "balance" / "entry_counts.parquet", pa.table({
            "entry_id": pa.array(range(len(WORDS)), pa.int32()), "entry": WORDS,
            "count": pa.array(counts, pa.int64())}))
    if "prune" in stages:
        rs = np.random.default_rng(0)
        size = rs.integers(5, 60, 6)
        _write(tmp_path / "prune" / "clusters.parquet", pa.table({
            "cluster_id": pa.array(range(6), pa.int32()), "size": size,
            "size_after_dedup": size - 2, "d_intra": rs.random(6), "d_inter": rs.random(6),
            "complexity": rs.random(6), "quota": (size - 2) // 2}))
    for s in stages:
        manifest_stages[s] = {"status": "done", "seconds": 1.5}
    pool_rows = sum(rows_per_shard)
    (tmp_path / "run.json").write_text(json.dumps({
        "config": cfg, "pool": {"rows": pool_rows, "shards": len(SHARDS), "duplicates": 3,
                                "bad_rows": {"bad row": 2}},
        "stages": manifest_stages, "versions": {"curate": "0.1.0"}}))
    return cfg


def _report(tmp_path, cfg, mapper=None) -> dict:
    stage = build(StageSpec("report", str(tmp_path), cfg, "fp"), ReportStage)
    return run_inline(stage, list(SHARDS), mapper)["count"]


def _kept(tmp_path, folder: str) -> set[str]:
    t = read_parts(tmp_path / folder)
    return set(t.filter(t["kept"])["uid"].to_pylist())


def _recount(match: pa.Table, keep: set[str] | None, n: int) -> np.ndarray:
    rows = match.to_pylist()
    c = np.zeros(n, np.int64)
    for r in rows:
        if keep is None or r["uid"] in keep:
            for e in r["entry_ids"]:
                c[e] += 1
    return c


FULL = ["download", "score", "match", "balance", "prune", "report"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fullrun")
    cfg = make_run(tmp, FULL)
    info = _report(tmp, cfg)
    return tmp, cfg, info


def test_outputs_recorded(full_run):
    tmp, _, info = full_run
    assert set(info["outputs"]) == {"report", "stage summary", "concept frequency",
                                    "downstream coverage"}
    for path in info["outputs"].values():
        assert (tmp / "reports" / path.rsplit("/", 1)[-1]).is_file()
    assert info["pairs_final"] == len(_kept(tmp, "prune"))
    json.dumps(info)  # recorded in run.json


def test_concept_frequency_equals_recount(full_run):
    tmp, _, _ = full_run
    cf = pq.read_table(tmp / "reports" / "concept_frequency.parquet")
    assert cf.column_names == ["entry_id", "entry", "count_pool", "count_after_balance",
                               "count_after_prune", "count_final", "rank", "head"]
    match = read_parts(tmp / "match")
    n = len(WORDS)
    pool = _recount(match, None, n)
    after_balance = _recount(match, _kept(tmp, "balance"), n)
    after_prune = _recount(match, _kept(tmp, "prune"), n)
    ids = cf["entry_id"].to_numpy()
    assert ids.tolist() == np.flatnonzero(pool).tolist()
    assert cf["entry"].to_pylist() == [WORDS[i] for i in ids]
    assert cf["count_pool"].to_numpy().tolist() == pool[ids].tolist()
    assert cf["count_after_balance"].to_numpy().tolist() == after_balance[ids].tolist()
    assert cf["count_after_prune"].to_numpy().tolist() == after_prune[ids].tolist()
    assert cf["count_final"].to_numpy().tolist() == after_prune[ids].tolist()
    assert cf["head"].to_pylist() == (pool[ids] > 20).tolist()
    # rank 1 = most frequent, a permutation of 1..K
    rank = cf["rank"].to_numpy()
    assert sorted(rank.tolist()) == list(range(1, len(ids) + 1))
    assert pool[ids][rank == 1][0] == pool.max()


def test_stage_summary_balances(full_run):
    tmp, _, _ = full_run
    s = pq.read_table(tmp / "reports" / "stage_summary.parquet").to_pylist()
    totals = [r for r in s if r["reason"] is None]
    assert [r["stage"] for r in totals] == ["ingest", "download", "score", "match", "balance",
                                            "prune"]
    for r in totals:
        assert r["pairs_in"] == r["kept"] + r["dropped"], r
        reasons = [x["count"] for x in s if x["stage"] == r["stage"] and x["reason"] is not None]
        assert sum(reasons) == r["dropped"], r["stage"]
    by = {r["stage"]: r for r in totals}
    pool_rows = pq.read_table(tmp / "pool").num_rows
    assert by["ingest"]["kept"] == pool_rows and by["ingest"]["pairs_in"] == pool_rows + 5
    assert by["download"]["pairs_in"] == pool_rows
    assert by["download"]["kept"] == len(_kept(tmp, "images"))
    assert by["score"]["pairs_in"] == by["download"]["kept"]
    assert by["match"]["pairs_in"] == by["match"]["kept"] == by["score"]["kept"]
    assert by["prune"]["kept"] == len(_kept(tmp, "prune"))
    prune_reasons = {x["reason"] for x in s if x["stage"] == "prune" and x["reason"]}
    # reason codes, as in run.json
    assert prune_reasons <= {"semantic_duplicate", "over_cluster_quota"}
    balance_reasons = {x["reason"] for x in s if x["stage"] == "balance" and x["reason"]}
    assert "no_metadata_match" in balance_reasons


def _naive_coverage(tmp, final: set[str], classes: list[str]) -> tuple[list, list]:
    """Pairs of the pool and of ``final`` whose spaced caption holds " class "."""
    pool = pq.read_table(tmp / "pool")
    spaced = [spacing(c) for c in pool["caption"].to_pylist()]
    spaced_final = [s for u, s in zip(pool["uid"].to_pylist(), spaced) if u in final]
    return ([sum(f" {c} " in s for s in spaced) for c in classes],
            [sum(f" {c} " in s for s in spaced_final) for c in classes])


def test_coverage_from_match_output(tmp_path, monkeypatch):
    """match first: classes that are vocabulary entries are read off match's counts, the
    rest matched on captions, St. Bernard (never matchable) not at all; same numbers."""
    from curate.stages import _report_counts

    matched: list[tuple[str, ...]] = []
    real = _report_counts._class_matcher
    monkeypatch.setattr(_report_counts, "_class_matcher",
                        lambda names: matched.append(names) or real(names))
    cfg = make_run(tmp_path, ["match", "balance", "report"])
    _report(tmp_path, cfg)
    _, distinct = distinct_classes(imagenet_classnames())
    cov = pq.read_table(tmp_path / "reports" / "downstream_coverage.parquet")
    want_pool, want_final = _naive_coverage(tmp_path, _kept(tmp_path, "balance"), distinct)
    assert cov["count_pool"].to_pylist() == want_pool
    assert cov["count_final"].to_pylist() == want_final
    got = dict(zip(distinct, want_pool))
    assert got["goldfish"] > 0 and got["Siamese cat"] > 0 and got["tench"] > 0
    names = set(matched[0])
    assert matched and all(m == matched[0] for m in matched)
    assert {"tench", "great white shark"} <= names
    assert not {"goldfish", "tabby cat", "Siamese cat", "St. Bernard"} & names


def test_coverage_equals_naive_recount(full_run):
    tmp, _, _ = full_run
    cov = pq.read_table(tmp / "reports" / "downstream_coverage.parquet")
    assert cov.column_names == ["class_index", "classname", "count_pool", "count_final",
                                "rank_final"]
    names = imagenet_classnames()
    idx, distinct = distinct_classes(names)
    assert len(names) == 1000 and cov.num_rows == len(distinct) == 998
    assert cov["classname"].to_pylist() == distinct
    assert cov["class_index"].to_pylist() == idx
    want_pool, want_final = _naive_coverage(tmp, _kept(tmp, "prune"), distinct)
    assert cov["count_pool"].to_pylist() == want_pool
    assert cov["count_final"].to_pylist() == want_final
    got = dict(zip(distinct, want_pool))
    assert got["goldfish"] > 0 and got["tabby cat"] > 0 and got["St. Bernard"] == 0
    rank = dict(zip(cov["classname"].to_pylist(), cov["rank_final"].to_pylist()))
    assert rank[distinct[int(np.argmax(want_final))]] == 1


def test_html_self_contained(full_run):
    tmp, _, _ = full_run
    page = (tmp / "reports" / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    assert page.count("data:image/png;base64,") >= 6
    assert 'id="random-weights-warning"' in page
    assert "meaningless" in page
    assert "<script" not in page
    assert str(tmp) in page
    # the config's URL is shown, defused
    assert "example.org/bot" in page and "https&#58;//example.org" in page


def test_only_download_ran(tmp_path):
    cfg = make_run(tmp_path, ["download", "report"])
    info = _report(tmp_path, cfg)
    assert "concept frequency" not in info["outputs"]
    assert not (tmp_path / "reports" / "concept_frequency.parquet").exists()
    page = (tmp_path / "reports" / "report.html").read_text(encoding="utf-8")
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    for sid in ("rank-frequency", "head-tail", "entry-counts", "top-entries", "scores",
                "clusters"):
        section = page.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]
        assert "not run" in section, sid
    assert "random-weights-warning" not in page  # score is not in this pipeline
    assert "http://" not in page and "https://" not in page
    s = pq.read_table(tmp_path / "reports" / "stage_summary.parquet")
    totals = s.filter(pc.is_null(s["reason"])).to_pylist()
    assert [r["stage"] for r in totals] == ["ingest", "download"]
    cov = pq.read_table(tmp_path / "reports" / "downstream_coverage.parquet")
    # final = what download kept
    assert pc.sum(cov["count_final"]).as_py() <= pc.sum(cov["count_pool"]).as_py()
    assert info["pairs_final"] == len(_kept(tmp_path, "images"))


def test_match_without_balance_and_missing_shard(tmp_path):
    """Entry names come from the vocabulary; a shard lacking match output is left out."""
    cfg = make_run(tmp_path, ["match", "report"])
    (tmp_path / "match" / SHARDS[2]).unlink()
    _report(tmp_path, cfg)
    cf = pq.read_table(tmp_path / "reports" / "concept_frequency.parquet")
    assert cf.column_names == ["entry_id", "entry", "count_pool", "count_final", "rank",
                               "head"]
    match = read_parts(tmp_path / "match")
    pool = _recount(match, None, len(WORDS))
    assert cf["count_pool"].to_pylist() == pool[pool > 0].tolist()
    assert cf["count_final"].to_pylist() == cf["count_pool"].to_pylist()
    assert cf["entry"].to_pylist() == [WORDS[i] for i in cf["entry_id"].to_pylist()]
    page = (tmp_path / "reports" / "report.html").read_text(encoding="utf-8")
    assert "1 of 3 pool shards are left out" in page


def test_esc_defuses_urls():
    assert esc("s3://bucket/<run>") == "s3&#58;//bucket/&lt;run&gt;"
    assert "://" not in esc("see https://example.org")


def test_emit_row_and_stale_curated_note(tmp_path):
    cfg = make_run(tmp_path, ["download", "match", "balance", "emit", "report"])
    final = sorted(_kept(tmp_path, "balance"))
    # emit's output is resharded: one file holding every kept pair but one
    _write(tmp_path / "curated" / "part-00000.parquet", pa.table({"uid": final[:-1]}))
    info = _report(tmp_path, cfg)
    s = pq.read_table(tmp_path / "reports" / "stage_summary.parquet").to_pylist()
    emit = [r for r in s if r["stage"] == "emit"]
    assert emit[0]["pairs_in"] == len(final) and emit[0]["kept"] == len(final) - 1
    assert emit[1]["reason"] == "not_emitted" and emit[1]["count"] == 1
    assert info["pairs_final"] == len(final)
    page = (tmp_path / "reports" / "report.html").read_text(encoding="utf-8")
    assert "emit may be stale" in page


def test_no_shards_still_renders(tmp_path):
    cfg = make_run(tmp_path, FULL)
    stage = build(StageSpec("report", str(tmp_path), cfg, "fp"), ReportStage)
    info = run_inline(stage, [])["count"]
    assert info["pairs_final"] == 0
    page = (tmp_path / "reports" / "report.html").read_text(encoding="utf-8")
    assert "3 of 3 pool shards are left out" in page
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in page, sid


def test_engine_path_matches_local_loop(tmp_path, ray_session):
    """In a pipeline the shards are counted as engine tasks: the same tables."""
    from curate.core import engine

    cfg = make_run(tmp_path, FULL)
    names = ["stage_summary", "concept_frequency", "downstream_coverage"]
    _report(tmp_path, cfg, lambda fn, items: [o.value for o in engine.map_items(fn, items)])
    via_ray = {n: pq.read_table(tmp_path / "reports" / f"{n}.parquet") for n in names}
    _report(tmp_path, cfg)
    for n in names:
        local = pq.read_table(tmp_path / "reports" / f"{n}.parquet")
        assert local.equals(via_ray[n]), n
