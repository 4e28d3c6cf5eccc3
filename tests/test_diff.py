"""curate diff on two runs of the offline example that differ in balance.t: the changed uids
equal the set difference of the two curated sets, read here with pyarrow."""

from __future__ import annotations

import csv
import io
import os
import re

import pytest
from helpers import curated, free_port
from typer.testing import CliRunner

from curate.cli import app


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, example_run):
    """The session's example run (only read here) and the example run again with
    balance.t=3."""
    from curate.app.example import run_example

    b = tmp_path_factory.mktemp("diff") / "b"
    os.environ["CURATE_EXAMPLE_PORT"] = str(free_port())
    try:
        run_example(str(b), None, ["balance.t=3"])
    finally:
        os.environ.pop("CURATE_EXAMPLE_PORT")
    return example_run[0], b


def _curated(run) -> set[str]:
    return set(curated(run)["uid"].to_pylist())


def test_csv_is_the_set_difference(two_runs, tmp_path):
    a, b = two_runs
    ua, ub = _curated(a), _curated(b)
    assert ua != ub and ua and ub
    r = CliRunner().invoke(app, ["diff", str(a), str(b), "--format", "csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert {x["uid"] for x in rows if x["change"] == "added"} == ub - ua
    assert {x["uid"] for x in rows if x["change"] == "removed"} == ua - ub
    assert len(rows) == len(ua ^ ub)


def test_summary_page_and_sql(two_runs, tmp_path):
    a, b = two_runs
    ua, ub = _curated(a), _curated(b)
    page = tmp_path / "diff.html"
    r = CliRunner().invoke(app, ["diff", str(a), str(b), "--html", str(page)])
    assert r.exit_code == 0, r.output
    assert f"B adds {len(ub - ua):,} and removes {len(ua - ub):,}" in r.output
    assert "balance" in r.output  # its kept count moved with t
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert not re.search(r"""(src|href)\\s*=\\s*["'](?!data:|#)""", html)
    assert html.count("data:image/png;base64,") >= 2
    r = CliRunner().invoke(app, ["diff", str(a), str(b), "--sql",
                                 "SELECT count(*) AS n FROM diff WHERE change = 'added'"])
    assert r.exit_code == 0 and str(len(ub - ua)) in r.output
    r = CliRunner().invoke(app, ["diff", str(a), str(tmp_path)])
    assert r.exit_code == 2 and "no curated/ folder" in r.output
