"""curate audit: a deterministic sample of one reason's drops on a labelling page, and
false-drop rates with Wilson intervals computed here from the quadratic they solve."""

from __future__ import annotations

import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import encode_image, photo, read_parts
from typer.testing import CliRunner

from curate.cli import app
from curate.driver import run_pipeline


@pytest.fixture(scope="module")
def dup_run(tmp_path_factory, ray_session):
    """download (pool images, no fetch) then image_dedup: 3 photos, each copied 3 times."""
    tmp = tmp_path_factory.mktemp("audit")
    rows = []
    for i in range(3):
        img = encode_image(photo(700 + i))
        rows += [(f"http://h{i}{j}.example.com/{i}-{j}.png", f"photo {i} copy {j}", img)
                 for j in range(4)]
    pool = tmp / "pool.parquet"
    pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows],
                             "image": pa.array([r[2] for r in rows], pa.binary())}), pool)
    cfg = base_config(stages=["download", "image_dedup"], pool={"shard_size": 5},
                      image_dedup={"placeholder_hosts": None})
    run_pipeline(cfg, str(tmp / "run"), pool=str(pool))
    return tmp / "run"


def test_page_is_a_deterministic_sample(dup_run, tmp_path):
    t = read_parts(dup_run / "image_dedup")
    dropped = [u for u, r in zip(t["uid"].to_pylist(), t["reason"].to_pylist())
               if r == "duplicate_image_bytes"]
    assert len(dropped) == 9
    want = sorted(dropped, key=lambda u: int(u[:16], 16))[:4]  # pool uids are hex: key = prefix
    pages = []
    for k in range(2):
        out = tmp_path / f"p{k}.html"
        r = CliRunner().invoke(app, ["audit", str(dup_run), "--reason",
                                     "duplicate_image_bytes", "--n", "4", "--out", str(out)])
        assert r.exit_code == 0, r.output
        pages.append(out.read_text(encoding="utf-8"))
    html = pages[0]
    assert pages[0] == pages[1]
    assert re.findall(r'data-uid="([0-9a-f]+)"', html) == want
    assert html.count("data:image/jpeg;base64,") == 4
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", html)
    assert "<script>" in html and "uid,reason,label" in html
    r = CliRunner().invoke(app, ["audit", str(dup_run), "--reason", "nope"])
    assert r.exit_code == 2 and "duplicate_image_bytes" in r.output


def _wilson_quadratic(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The interval's ends are the p with |k/n - p| = z * sqrt(p (1 - p) / n): roots of
    (1 + z²/n) p² - (2k/n + z²/n) p + (k/n)² = 0."""
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    d = math.sqrt(b * b - 4 * a * c)
    return (-b - d) / (2 * a), (-b + d) / (2 * a)


def test_the_one_wilson_interval_matches_the_quadratic_roots():
    """audit, pilot and pilot entries share curate.algorithms.intervals: scalar and array
    forms against the roots written above, edges (k = 0, k = n) and n = 0 included."""
    import numpy as np

    from curate.algorithms.intervals import wilson, wilson_arrays

    cases = [(0, 1), (0, 7), (3, 7), (7, 7), (2, 9), (50, 400), (399, 400)]
    lo, hi = wilson_arrays([k for k, _ in cases] + [0], [n for _, n in cases] + [0])
    for i, (k, n) in enumerate(cases):
        want = _wilson_quadratic(k, n)
        assert wilson(k, n) == pytest.approx(want, abs=1e-12)
        assert (lo[i], hi[i]) == pytest.approx(want, abs=1e-12)
    assert (lo[-1], hi[-1]) == (0.0, 1.0) and wilson(0, 0) == (0.0, 1.0)
    assert np.all(lo <= hi)


def test_false_drop_rates_with_wilson_intervals(dup_run, tmp_path):
    t = read_parts(dup_run / "image_dedup")
    dropped = [u for u, r in zip(t["uid"].to_pylist(), t["reason"].to_pylist()) if r]
    labels = tmp_path / "labels.csv"
    lines = ["uid,reason,label"] + [f"{u},duplicate_image_bytes,{'good' if i < 2 else 'bad'}"
                                    for i, u in enumerate(dropped)]
    labels.write_text("\n".join(lines + [lines[1]]) + "\n")  # a repeated label counts once
    r = CliRunner().invoke(app, ["audit", str(dup_run), "--labels", str(labels)])
    assert r.exit_code == 0, r.output
    out = pq.read_table(dup_run / "audit" / "false_drops.parquet").to_pylist()
    assert len(out) == 1 and out[0]["labelled"] == 9 and out[0]["false_drops"] == 2
    lo, hi = _wilson_quadratic(2, 9)
    assert out[0]["ci_low"] == pytest.approx(lo) and out[0]["ci_high"] == pytest.approx(hi)
    assert "2 of     9 false drops" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,reason,label\nx,duplicate_image_bytes,maybe\n")
    r = CliRunner().invoke(app, ["audit", str(dup_run), "--labels", str(bad)])
    assert r.exit_code == 2 and "line 2" in r.output
