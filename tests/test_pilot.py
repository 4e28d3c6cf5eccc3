"""curate pilot + loss-aware plan: the uid-hash sample, and predictions on a synthetic pool
with planted survival rates checked against the full run (within their interval)."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import base_config

from curate.driver import run_pipeline

WORDS = ["dog", "cat", "red car", "tree", "house", "blue", "sky", "beach", "umbrella", "kite"]


def _pool(path, n: int, seed: int = 0) -> str:
    """Zipf-like captions (balance has a head) and a pool score uniform in [0, 1): a
    min_score of s keeps 1 - s of the pairs, the planted rate."""
    rng = random.Random(seed)
    weights = [60, 25, 10, 8, 5, 4, 3, 2, 1, 1]
    caps = [f"a {rng.choices(WORDS, weights)[0]} and the {rng.choice(WORDS)} {i}"
            for i in range(n)]
    caps[::97] = [f"nothing known here {i}" for i in range(len(caps[::97]))]
    score = np.random.default_rng(seed).random(n)
    pq.write_table(pa.table({"caption": caps, "my_score": score}), path)
    return str(path)


def _cfg(tmp_path, score_filter: dict, t: int = 30, **pool):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS + ["car"]) + "\n")
    return base_config(stages=["score", "match", "balance"],
                       pool={"shard_size": 500, **pool},
                       score={"pool_score_column": "my_score", "filter": score_filter},
                       match={"metadata": str(vocab)}, balance={"t": t, "seed": 1})


def _kept(out) -> int:
    from helpers import read_parts

    b = read_parts(out / "balance")
    return int(pc.sum(b["kept"]).as_py() or 0)


def test_sample_is_per_uid_whatever_the_sharding(tmp_path):
    from helpers import ingest_into, pool_table

    pool = _pool(tmp_path / "pool.parquet", 2000)
    uids = []
    for size, dedup in ((2000, True), (173, True), (300, False)):  # False: the driver's read
        (tmp_path / f"s{size}").mkdir()
        rd, m = ingest_into(tmp_path / f"s{size}", pool, shard_size=size,
                            drop_duplicates=dedup, sample_fraction=0.3, sample_seed=4)
        uids.append(sorted(pool_table(rd)["uid"].to_pylist()))
        assert m["pool"]["rows"] == len(uids[-1])
    assert uids[0] == uids[1] == uids[2]
    assert abs(len(uids[0]) / 2000 - 0.3) < 0.05
    rd, m = ingest_into(tmp_path / "full", pool)  # without the option: every pair
    assert m["pool"]["rows"] == 2000


def test_full_run_fingerprint_unchanged_by_the_option():
    from curate.config import PoolConfig

    assert "sample_fraction" not in PoolConfig().model_dump(mode="json")
    assert PoolConfig(sample_fraction=0.5).model_dump(mode="json")["sample_fraction"] == 0.5


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_prediction_interval_holds_the_full_run(tmp_path, ray_session, fraction):
    from curate.app.pilot import PilotModel

    pool = _pool(tmp_path / "pool.parquet", 4000, seed=2)
    cfg_pilot = _cfg(tmp_path, {"min_score": 0.4}, sample_fraction=fraction, sample_seed=0)
    run_pipeline(cfg_pilot, str(tmp_path / "pilot"), pool=pool)
    run_pipeline(_cfg(tmp_path, {"min_score": 0.4}), str(tmp_path / "full"), pool=pool)
    m = PilotModel(str(tmp_path / "pilot"))
    score = next(s for s in m.stages if s["name"] == "score")
    lo, hi = score["interval"]
    assert lo <= 0.6 <= hi  # the planted rate
    full = _kept(tmp_path / "full")
    p = m.predict()
    assert p["low"] <= full <= p["high"], (p, full)
    assert p["high"] - p["low"] < 0.5 * full  # an interval that says something
    # another t, from the same pilot, against a full run at that t
    p2 = m.predict(t=8)
    run_pipeline(_cfg(tmp_path, {"min_score": 0.4}, t=8), str(tmp_path / "full8"), pool=pool)
    full8 = _kept(tmp_path / "full8")
    assert p2["low"] <= full8 <= p2["high"], (p2, full8)


def test_plan_target_writes_a_pipeline_that_hits_it(tmp_path, ray_session):
    import yaml

    from curate.app.pilot import plan_pilot
    from curate.stages.registry import load_pipeline

    pool = _pool(tmp_path / "pool.parquet", 4000, seed=3)
    cfg = _cfg(tmp_path, {"top_fraction": 0.5}, sample_fraction=0.3, sample_seed=1)
    run_pipeline(cfg, str(tmp_path / "pilot"), pool=pool)
    res = plan_pilot(str(tmp_path / "pilot"), 600)
    chosen = res["chosen"]
    assert chosen["low"] <= 600 <= chosen["high"]
    assert [s["name"] for s in res["stages"]] == ["score", "balance"]
    assert len(res["sweep"]) > 5
    path = tmp_path / "pilot" / "plan" / "pipeline.yaml"
    data = yaml.safe_load(path.read_text())
    assert "sample_fraction" not in data["pool"]
    assert data["balance"]["t"] == int(chosen["t"])
    run_pipeline(load_pipeline(str(path)), str(tmp_path / "full"), pool=pool)
    full = _kept(tmp_path / "full")
    assert chosen["low"] <= full <= chosen["high"], (chosen, full)
    # top_fraction swept: proportional thinning before balance, monotone in it
    at_t = sorted((p["top_fraction"], p["predicted"]) for p in res["sweep"]
                  if p["t"] == res["configured"]["t"])
    assert len(at_t) == 5 and [v for _, v in at_t] == sorted(v for _, v in at_t)
    assert plan_pilot(str(tmp_path / "pilot"), None)["configured"] == res["configured"]


def test_plan_cli_prints_survival_and_interval(tmp_path, ray_session):
    import yaml
    from typer.testing import CliRunner

    from curate.cli import app

    pool = _pool(tmp_path / "pool.parquet", 1500, seed=4)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump(_cfg(tmp_path, {"min_score": 0.2}).dump()))
    r = CliRunner().invoke(app, ["pilot", pool, "--pipeline", str(pipe), "--fraction", "0.5",
                                 "--out", str(tmp_path / "pilot"), "--seed", "2"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "pilot" / "run.json").read_text())
    assert m["config"]["pool"]["sample_fraction"] == 0.5
    assert m["config"]["pool"]["sample_seed"] == 2
    r = CliRunner().invoke(app, ["plan", str(tmp_path / "pilot"), "--target", "300"])
    assert r.exit_code == 0, r.output
    assert "survival per stage" in r.output and "score" in r.output
    assert "predicted final size" in r.output and "95%" in r.output
    assert "pipeline.yaml" in r.output and "entries.parquet" in r.output
    e = pq.read_table(tmp_path / "pilot" / "plan" / "entries.parquet")
    np.testing.assert_allclose(e["estimated_count"].to_numpy(),
                               e["pilot_count"].to_numpy() / 0.5)
    r = CliRunner().invoke(app, ["plan", str(tmp_path / "pilot"), "--target", "99999999"])
    assert r.exit_code == 2 and "above what t can give" in r.output
