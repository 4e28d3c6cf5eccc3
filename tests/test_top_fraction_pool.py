"""score's top_fraction over the whole pool (DataComp) vs over the survivors, DataComp's
``>=`` threshold rule, scores from a pool column, and the report's threshold warning.

Expected sets come from NumPy in the test, written from DataComp's code
(``baselines/apply_filter.py``: ``get_threshold`` takes ``n = int(len(df) * fraction)`` and
``threshold = -np.sort(-scores)[n]`` over every pair; ``load_uids_with_clip_score_helper``
keeps ``score >= threshold``), never from curate's selection code."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import base_config
from helpers import embedding_pool, read_parts

from curate.core.rundir import step_info
from curate.driver import run_pipeline


def _reference_scores(pool_path) -> dict[str, float]:
    """caption -> cosine of the pool's own normalised embeddings, as float32."""
    t = pq.read_table(pool_path)
    x = np.array(t["image_emb"].to_pylist(), np.float64)
    y = np.array(t["text_emb"].to_pylist(), np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    s = (x * y).sum(1).astype(np.float32)
    return dict(zip(t["caption"].to_pylist(), s.tolist()))


def _run(tmp_path, name, pool, **filt):
    cfg = base_config(stages=["score"], pool={"shard_size": 23},
                      score={"basic": {"min_caption_chars": 17}, "filter": filt})
    out = tmp_path / name
    run_pipeline(cfg, str(out), pool=pool)
    s = read_parts(out / "scores")
    p = read_parts(out / "pool").select(["uid", "caption"])
    idx = pc.index_in(s["uid"], value_set=p["uid"].combine_chunks())
    return s.append_column("caption", pc.take(p["caption"], idx))


def _top(rows: list[dict], k: int) -> set[str]:
    """The k best rows by (score descending, uid key ascending): curate's documented order;
    derived uids are 32 hex digits, so the key is int(uid[:16], 16)."""
    best = sorted(rows, key=lambda r: (-r["clip_score"], int(r["uid"][:16], 16)))[:k]
    return {r["caption"] for r in best}


def test_top_fraction_over_pool_and_over_survivors(tmp_path, ray_session):
    pool = embedding_pool(tmp_path / "pool.parquet", 120, seed=7)
    ref = _reference_scores(pool)
    caps = list(ref)
    passing = {c for c in caps if len(c) >= 17}  # the basic rule, written out
    assert 0 < len(caps) - len(passing) < len(caps)  # some pairs are basic-filtered

    # pool (default): the k best of *every* pair, then only those passing the basic rule
    t = _run(tmp_path, "pool", pool, top_fraction=0.4, top_fraction_rule="exact_k")
    rows = t.to_pylist()
    assert all(r["clip_score"] is not None for r in rows)  # basic-filtered ones too
    np.testing.assert_allclose([r["clip_score"] for r in rows],
                               [ref[r["caption"]] for r in rows], atol=1e-5)
    in_cut = _top(rows, round(0.4 * len(caps)))
    kept = set(t.filter(t["kept"])["caption"].to_pylist())
    assert kept == in_cut & passing
    assert in_cut - passing  # the cut did rank some basic-filtered pairs
    dropped = [r for r in rows if not r["kept"]]
    assert {r["reason"] for r in dropped if r["caption"] not in passing} == {
        "caption_too_short"}
    assert {r["reason"] for r in dropped if r["caption"] in passing} == {"below_top_fraction"}

    # survivors: the k best of the pairs that passed the basic rule
    t = _run(tmp_path, "surv", pool, top_fraction=0.4, top_fraction_of="survivors",
             top_fraction_rule="exact_k")
    rows = [r for r in t.to_pylist() if r["caption"] in passing]
    assert all(r["clip_score"] is None for r in t.to_pylist() if r["caption"] not in passing)
    k = round(0.4 * len(passing))
    assert set(t.filter(t["kept"])["caption"].to_pylist()) == _top(rows, k)
    assert pc.sum(t["kept"]).as_py() == k


def test_datacomp_rule_is_ge_the_threshold_at_int_n_f(tmp_path, ray_session):
    """DataComp's rule on a pool that brings its own score column with ties: no model runs
    (ViT-L-14/openai weights are not available offline, so a model load would fail)."""
    n = 50
    rng = np.random.default_rng(3)
    scores = np.round(rng.uniform(0.1, 0.4, n), 2)  # 2 decimals: many ties
    caps = [f"a caption with enough words {i}" for i in range(n)]
    caps[5] = "short"  # basic-filtered: still ranked (pool), never kept
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(n)], "text": caps,
                             "clip_l14_similarity_score": scores}), pool)
    for frac in (0.3, 0.5, 1.0):
        cfg = base_config(stages=["score"], pool={"shard_size": 7, "columns": {"caption": "text"}},
                          score={"model": "ViT-L-14", "pretrained": "openai",
                                 "basic": {"min_caption_chars": 6},
                                 "filter": {"top_fraction": frac,
                                            "top_fraction_rule": "datacomp"}})
        out = tmp_path / f"run{frac}"
        m = run_pipeline(cfg, str(out), pool=str(pool))
        t = read_parts(out / "scores")
        # DataComp, written out: over all n pairs (float32, as curate compares)
        s32 = scores.astype(np.float32)
        m_idx = int(n * frac)
        if m_idx < n:
            thr = -np.sort(-s32)[m_idx]
            expect = {f"{i:032x}" for i in range(n) if s32[i] >= thr and i != 5}
        else:  # DataComp's index would run past the end: keep everything
            expect = {f"{i:032x}" for i in range(n) if i != 5}
        assert set(t.filter(t["kept"])["uid"].to_pylist()) == expect, frac
        model = step_info(m["stages"]["score"], "model")["model"]
        assert "pool's clip_l14_similarity_score" in model
        assert "image_emb" not in t.column_names


def test_exact_k_rule_over_the_pool(tmp_path, ray_session):
    n = 40
    scores = np.linspace(0.1, 0.5, n)[::-1].copy()
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": [f"caption number {i}" for i in range(n)],
                             "my_score": scores}), pool)
    cfg = base_config(stages=["score"], pool={"shard_size": 9},
                      score={"pool_score_column": "my_score",
                             "filter": {"top_fraction": 0.25,
                                        "top_fraction_rule": "exact_k"}})
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=str(pool))
    t = read_parts(out / "scores")
    assert pc.sum(t["kept"]).as_py() == round(0.25 * n)
    kept = np.sort(t.filter(t["kept"])["clip_score"].to_numpy())[::-1]
    np.testing.assert_array_equal(kept, np.sort(scores.astype(np.float32))[::-1][:10])


def test_missing_pool_score_column_fails_before_any_shard(tmp_path, ray_session):
    import pytest

    from curate.errors import ConfigError

    pool = embedding_pool(tmp_path / "pool.parquet", 10)
    cfg = base_config(stages=["score"], score={"pool_score_column": "nope"})
    with pytest.raises(ConfigError, match="nope"):
        run_pipeline(cfg, str(tmp_path / "run"), pool=pool)


def test_threshold_note_when_min_score_meets_another_model():
    from curate.stages._report_thresholds import threshold_notes
    from curate.stages.registry import parse_pipeline

    def notes(**score):
        p = parse_pipeline({"stages": ["score", "report"], "score": score})
        return threshold_notes(p, [p.ref("score")])

    laion = notes(model="ViT-L-14", pretrained="openai", filter={"min_score": 0.28})
    assert len(laion) == 1 and "LAION-5B" in laion[0] and "ViT-B/32" in laion[0]
    assert notes(model="ViT-B-32", pretrained="openai", filter={"min_score": 0.28}) == []
    assert notes(model="ViT-B-32", pretrained="openai", filter={"min_score": 0.3}) == []
    assert len(notes(model="ViT-B-32", pretrained="datacomp_xl_s13b_b90k",
                     filter={"min_score": 0.3})) == 1
    assert notes(pool_score_column="clip_b32_similarity_score",
                 filter={"min_score": 0.28}) == []
    assert len(notes(pool_score_column="clip_l14_similarity_score",
                     filter={"min_score": 0.28})) == 1
    assert len(notes(model="ViT-B-32", pretrained="openai", filter={"min_score": 0.26})) == 1
    assert notes(model="ViT-B-32", pretrained="openai", filter={"min_score": 0.2}) == []
    assert notes(model="ViT-B-32", pretrained="openai", filter={"top_fraction": 0.3}) == []


def test_datacomp_pipelines_are_valid():
    from pathlib import Path

    from curate.stages.registry import load_pipeline

    root = Path(__file__).resolve().parents[1] / "pipelines"
    clip = load_pipeline(root / "datacomp_clip_score.yaml")
    f = clip.score.filter
    assert (f.top_fraction, f.top_fraction_of, f.top_fraction_rule) == (0.3, "pool", "datacomp")
    assert clip.stages[0] == "score" and clip.score.model == "ViT-L-14"
    assert clip.score.pool_score_column == "clip_l14_similarity_score"
    img = load_pipeline(root / "datacomp_image_based.yaml")
    assert img.stages.index("score") < img.stages.index("datacomp_image")
    d = img.section("datacomp_image")
    assert (d.k, d.niter, d.seed, d.max_points_per_centroid) == (100_000, 20, 0, 10_000_000)


def test_report_page_notes_a_laion_threshold_on_another_scorer(tmp_path, ray_session):
    pool = embedding_pool(tmp_path / "pool.parquet", 30, seed=2)
    cfg = base_config(stages=["score", "report"], pool={"shard_size": 16},
                      score={"filter": {"min_score": 0.28}})
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=pool)
    page = (out / "reports" / "report.html").read_text()
    assert "LAION-5B English" in page and "Thresholds do not carry across models" in page


def test_a_pool_that_scores_without_a_model_runs_score_as_tasks(tmp_path, ray_session,
                                                                monkeypatch):
    """With both embeddings in the pool there is no model to hold: score's shards go to
    one-core tasks, not to actors (a new process that would import torch for nothing)."""
    from curate.core import engine

    calls, real = [], engine.map_items

    def spy(fn, items, **kw):
        calls.append((kw.get("desc"), kw.get("num_actors"), kw.get("resources")))
        return real(fn, items, **kw)

    monkeypatch.setattr(engine, "map_items", spy)
    pool = embedding_pool(tmp_path / "pool.parquet", 60, seed=2)
    t = _run(tmp_path, "tasks", pool, min_score=-1.0)
    assert t.num_rows == 60
    score = [(a, r) for d, a, r in calls if d == "score"]
    assert score and all(a is None and r.num_cpus == 1 and not r.num_gpus for a, r in score)
