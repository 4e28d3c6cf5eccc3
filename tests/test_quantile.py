"""The quantile kind: a cut of any numeric column of an earlier stage or the pool.

Expected sets are computed here in NumPy from the documented rules, never from curate's
selection code: ``exact_k`` keeps the round(f x n) best by (value descending, uid key
ascending) — ascending values for ``bottom_fraction`` — and ``datacomp`` is DataComp's
``get_threshold`` (``baselines/apply_filter.py``): ``threshold = -np.sort(-v)[int(n x f)]``,
keep ``v >= threshold``. Values compare as float32; uids are 32 hex digits, so the key is
``int(uid[:16], 16)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import hex_uids, read_parts
from test_aesthetic import HEADS, _direct, _real_like

from curate.core.rundir import step_info
from curate.driver import run_pipeline
from curate.errors import ConfigError


def _pool(tmp_path: Path, n: int = 97, seed: int = 3) -> tuple[str, dict[str, float | None]]:
    """Pool rows with a score column holding ties, NaNs and nulls."""
    rng = np.random.default_rng(seed)
    v = np.round(rng.normal(size=n), 1)  # one decimal: many ties
    vals: list[float | None] = v.tolist()
    for i in range(0, n, 13):
        vals[i] = None
    for i in range(5, n, 17):
        vals[i] = float("nan")
    uids = hex_uids(n, seed)
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"uid": uids, "url": [f"http://x/{i}" for i in range(n)],
                             "caption": [f"c {i}" for i in range(n)],
                             "aesthetic_score": pa.array(vals, pa.float64())}), path)
    return str(path), dict(zip(uids, vals))


def _valued(vals: dict[str, float | None]) -> dict[str, np.float32]:
    return {u: np.float32(v) for u, v in vals.items() if v is not None and not np.isnan(v)}


def _exact_k(vals: dict[str, float | None], f: float, bottom: bool = False) -> set[str]:
    ok = _valued(vals)
    sign = 1 if bottom else -1
    order = sorted(ok, key=lambda u: (sign * ok[u], int(u[:16], 16)))
    return set(order[:int(round(f * len(ok)))])


def _datacomp(vals: dict[str, float | None], f: float) -> set[str]:
    ok = _valued(vals)
    v = np.array(list(ok.values()), np.float32)
    thr = -np.sort(-v)[int(len(v) * f)]
    return {u for u, x in ok.items() if x >= thr}


def _run(tmp_path: Path, name: str, pool: str, **section) -> tuple[pa.Table, dict]:
    cfg = base_config(stages=["quantile"], pool={"shard_size": 20}, quantile=section)
    m = run_pipeline(cfg, str(tmp_path / name), pool=pool)
    return read_parts(tmp_path / name / "quantile"), m


def _kept(t: pa.Table) -> set[str]:
    return set(t.filter(t["kept"])["uid"].to_pylist())


@pytest.mark.usefixtures("ray_session")
def test_fractions_and_bounds_of_a_pool_column(tmp_path):
    pool, vals = _pool(tmp_path)
    no_value = {u for u, v in vals.items() if v is None or np.isnan(v)}
    for rule, f, want in [("exact_k", 0.3, _exact_k(vals, 0.3)),
                          ("datacomp", 0.3, _datacomp(vals, 0.3)),
                          ("datacomp", 1.0, set(_valued(vals)))]:
        t, m = _run(tmp_path, f"top-{rule}-{f}", pool, column="aesthetic_score",
                    top_fraction=f, rule=rule)
        assert _kept(t) == want, (rule, f)
        reasons = dict(zip(t["uid"].to_pylist(), t["reason"].to_pylist()))
        assert {u for u, r in reasons.items() if r == "no_value"} == no_value
        assert {u for u, r in reasons.items() if r == "outside_quantile"} == \
            set(_valued(vals)) - want
        st = m["stages"]["quantile"]
        assert st["kept"] == len(want) and st["dropped"]["no_value"] == len(no_value)
        assert step_info(st, "source")["source"] == "pool"
        info = step_info(st, "apply")
        assert info["threshold"] == pytest.approx(min(_valued(vals)[u] for u in want))
    assert len(_exact_k(vals, 0.3)) < len(_datacomp(vals, 0.3))  # ties: the rules differ

    t, _ = _run(tmp_path, "bottom", pool, column="aesthetic_score", bottom_fraction=0.25,
                rule="exact_k")
    assert _kept(t) == _exact_k(vals, 0.25, bottom=True)
    t, m = _run(tmp_path, "bounds", pool, column="aesthetic_score", min=-0.5, max=0.7)
    assert _kept(t) == {u for u, v in _valued(vals).items() if -0.5 <= v <= 0.7}
    assert [s for s in m["stages"]["quantile"]["steps"]] == ["source", "apply"]


@pytest.mark.usefixtures("ray_session")
def test_top_30_percent_by_an_earlier_stages_aesthetic_score(tmp_path):
    """The issue's example: ``quantile: {column: aesthetic_score, top_fraction: 0.3}`` after
    an aesthetic stage that already dropped some pairs: the cut is over what reaches it."""
    x = _real_like(80, "vit_l_14", seed=4)
    p = tmp_path / "pool.parquet"
    uids = hex_uids(len(x), 9)
    pq.write_table(pa.table({
        "uid": uids, "caption": [f"pair {i}" for i in range(len(x))],
        "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 768)}), p)
    cfg = base_config(stages=["aesthetic", "quantile"], pool={"shard_size": 16},
                      aesthetic={"model": "vit_l_14", "min_score": 3.0},
                      quantile={"column": "aesthetic_score", "top_fraction": 0.3,
                                "rule": "exact_k"})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=str(p))
    scores = _direct(x, HEADS / "sa_0_4_vit_l_14_linear.pth").astype(np.float32)
    reach = {u: s for u, s in zip(uids, scores) if s > 3.0}  # LAION's cut, written out
    assert 0 < len(reach) < len(x)
    want = _exact_k(reach, 0.3)
    t = read_parts(tmp_path / "run" / "quantile")
    assert set(t["uid"].to_pylist()) == set(reach)  # dropped pairs never reach it
    assert _kept(t) == want
    assert step_info(m["stages"]["quantile"], "source")["source"] == "aesthetic"
    # the curated rows of a later emit would be these: the decisions view agrees
    assert m["stages"]["quantile"]["kept"] == len(want)
    # a rerun of the same pipeline redoes nothing and changes nothing
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "run" / "quantile").glob("*")}
    m2 = run_pipeline(cfg, str(tmp_path / "run"), pool=str(p))
    after = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "run" / "quantile").glob("*")}
    assert after == before
    assert m2["stages"]["quantile"]["shards_skipped"] == m2["stages"]["quantile"]["shards_done"]


@pytest.mark.usefixtures("ray_session")
def test_a_column_nothing_has_is_one_line_before_any_shard(tmp_path):
    pool, _ = _pool(tmp_path, n=30)
    with pytest.raises(ConfigError, match=r"quantile\.column: no 'sharpness' in the output "
                                          r"of pool"):
        _run(tmp_path, "missing", pool, column="sharpness", top_fraction=0.5)
    assert not list((tmp_path / "missing" / "quantile").glob("part-*"))
    with pytest.raises(ConfigError, match="caption.* is string, not a number"):
        _run(tmp_path, "text", pool, column="caption", top_fraction=0.5)


def test_config_says_one_cut():
    for bad in [{"column": "a"}, {"column": "a", "top_fraction": 0.2, "min": 1},
                {"column": "a", "top_fraction": 0.2, "bottom_fraction": 0.1},
                {"column": "kept", "top_fraction": 0.2}]:
        with pytest.raises(ConfigError):
            base_config(stages=["quantile"], quantile=bad)
