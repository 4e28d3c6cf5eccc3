"""The command line: bad input gives one clear line and exit 2; lock; status; query."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.core.rundir import RunDir
from curate.errors import ConfigError
from curate.stages.registry import load_pipeline as load_config

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("curate: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def yaml_cfg(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("stages: [download]\npool: {shard_size: 4}\n"
                 "download: {allow_private_addresses: true}\n")
    return str(p)


def _pool(tmp_path, **cols) -> str:
    p = tmp_path / "pool.parquet"
    pq.write_table(pa.table(cols), p)
    return str(p)


URLS = ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b.jpg"]


@pytest.mark.parametrize("cols,needles", [
    ({"url": URLS, "text": ["a", "b"]}, ["no caption column", "pool.columns.caption"]),
    ({"url": URLS, "caption": ["a", None]}, ["row 1", "caption is null"]),
    ({"url": URLS, "caption": ["a", "  "]}, ["row 1", "caption is empty"]),
    ({"url": URLS, "caption": [1, 2]}, ["caption column has type int64"]),
    ({"url": ["ftp://x/a.jpg", "http://x/b"], "caption": ["a", "b"]},
     ["row 0", "url is not http(s)"]),
    ({"url": URLS, "caption": ["a", "b\x00c"]}, ["row 1", "NUL"]),
])
def test_bad_pool_rows(tmp_path, yaml_cfg, cols, needles):
    pool = _pool(tmp_path, **cols)
    r = _run("run", "--pool", pool, "--pipeline", yaml_cfg, "--out", str(tmp_path / "r"))
    _one_line_error(r, pool, *needles)


def test_missing_and_non_parquet_pool(tmp_path, yaml_cfg):
    r = _run("run", "--pool", str(tmp_path / "nope.parquet"), "--pipeline", yaml_cfg,
             "--out", str(tmp_path / "r"))
    _one_line_error(r, "no such file")
    bad = tmp_path / "bad.parquet"
    bad.write_text("url,caption\nhttp://x,y\n")
    r = _run("run", "--pool", str(bad), "--pipeline", yaml_cfg, "--out", str(tmp_path / "r"))
    _one_line_error(r, "not a readable Parquet file")


def test_mapped_column_missing(tmp_path, yaml_cfg):
    pool = _pool(tmp_path, URL=URLS, TEXT=["a", "b"])
    r = _run("run", "--pool", pool, "--pipeline", yaml_cfg, "--out", str(tmp_path / "r"),
             "--set", "pool.columns={url: URL, caption: CAPTION}")
    _one_line_error(r, "column 'CAPTION'", "pool.columns.caption")


@pytest.mark.parametrize("sets,needles", [
    (["balance.tt=3"], ["balance.tt", "unknown key"]),
    (["balance.t=0"], ["balance.t", "greater than 0"]),
    (["download.timeout=-1"], ["download.timeout"]),
    (["stages=[download, nope]"], ["stages"]),
    (["novalue"], ["expected KEY=VALUE"]),
])
def test_bad_config(tmp_path, yaml_cfg, sets, needles):
    pool = _pool(tmp_path, url=URLS, caption=["a", "b"])
    args = ["run", "--pool", pool, "--pipeline", yaml_cfg, "--out", str(tmp_path / "r")]
    for s in sets:
        args += ["--set", s]
    _one_line_error(_run(*args), *needles)


def test_yaml_errors(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("stages: [download\npool: {\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config(p)
    p.write_text("stages: [download]\nunknown_section: {}\n")
    with pytest.raises(ConfigError, match="unknown_section: unknown key"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_apply():
    cfg = load_config(None, ["balance.t=1234", "pool.columns={url: URL, caption: TEXT}",
                             "stages=[match, balance]"])
    assert cfg.balance.t == 1234 and cfg.pool.columns == {"url": "URL", "caption": "TEXT"}
    assert cfg.stages == ["match", "balance"]


def test_fingerprint_chain_changes_only_downstream():
    a = load_config(None, ["stages=[download, match, balance]"])
    b = load_config(None, ["stages=[download, match, balance]", "balance.t=5"])
    fa, fb = a.fingerprints(), b.fingerprints()
    assert fa["download"] == fb["download"] and fa["match"] == fb["match"]
    assert fa["balance"] != fb["balance"]


def test_locked_run_directory(tmp_path, yaml_cfg):
    pool = _pool(tmp_path, url=URLS, caption=["a", "b"])
    out = tmp_path / "r"
    rd = RunDir(str(out))
    rd.lock()
    try:
        r = _run("run", "--pool", pool, "--pipeline", yaml_cfg, "--out", str(out))
        _one_line_error(r, "locked by pid", "another curate run")
    finally:
        rd.unlock()


def test_run_status_query(tmp_path, image_server, ray_session, yaml_cfg):
    pool = _pool(tmp_path, url=[image_server.url("/ok/1.png"), image_server.url("/nope")],
                 caption=["a picture", "missing"])
    out = str(tmp_path / "r")
    r = _run("run", "--pool", pool, "--pipeline", yaml_cfg, "--out", out)
    assert r.exit_code == 0, r.output
    assert "download" in r.output
    r = _run("status", out, "--json")
    st = json.loads(r.output)
    assert st["stages"]["download"]["kept"] == 1
    assert st["stages"]["download"]["dropped"] == {"download_failed": 1}
    r = _run("query", out, "SELECT dropped_by, count(*) AS n FROM decisions GROUP BY 1 "
             "ORDER BY 1", "--format", "csv")
    assert r.exit_code == 0, r.output
    assert '"download",1' in r.output.replace(" ", "")
    # two pool pairs: each view has a row per pair (images keeps the failed fetch as a row
    # with status failed), and the JSON format is one object per row
    for view in ("pool", "images", "decisions"):
        r = _run("query", out, f"SELECT count(*) AS n FROM {view}", "--format", "json")
        assert r.exit_code == 0, (view, r.output)
        assert [json.loads(ln) for ln in r.output.strip().splitlines()] == [{"n": 2}], (
            view, r.output)
    _one_line_error(_run("query", out, "SELEC nonsense"), "query:")
    # rerun on the finished directory: resumes, nothing to do, same result
    before = _files(tmp_path / "r" / "images")
    r = _run("run", "--out", out)
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / "r" / "images") == before  # no shard written again
    dl = json.loads((tmp_path / "r" / "run.json").read_text())["stages"]["download"]
    assert dl["shards_skipped"] == dl["shards_total"] == 1
    again = json.loads(_run("status", out, "--json").output)
    same = ("status", "shards_done", "rows_in", "kept", "dropped", "failed_shards")
    assert ({k: again["stages"]["download"][k] for k in same}
            == {k: st["stages"]["download"][k] for k in same})


def _files(folder) -> dict[str, tuple[int, bytes]]:
    """Every shard file of a stage folder: (mtime in ns, bytes); a rewrite changes either."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("part-*")}
