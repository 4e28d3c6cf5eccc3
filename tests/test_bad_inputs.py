"""The bad-input matrix: every case is one clear line naming what and where, the documented
exit code, and nothing already written is touched.

Cases that fail before any stage runs go through the CLI in-process (fast); per-row
problems (an HTML page served as an image, a decompression bomb) are failures with a reason
in the images shard, and the run exits 0.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bomb_png, drawn_image
from typer.testing import CliRunner

from curate.cli import app

URL = "http://127.0.0.1:9/x.jpg"
BASE_YAML = "stages: [match]\npool: {shard_size: 4}\nmatch: {metadata: %s}\n"


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # returns extra CLI args (after run --out)
    needles: tuple[str, ...]
    code: int = 2


def pool(tmp: Path, name: str = "pool.parquet", **cols) -> str:
    p = tmp / name
    pq.write_table(pa.table(cols), p)
    return str(p)


def put(path: Path, data: str | bytes) -> None:
    """Write a file inside a lambda (write_text returns a count, which is truthy)."""
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def vocab(tmp: Path, text: str = "dog\ncat\n", name: str = "v.txt") -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


def cfg(tmp: Path, body: str | None = None) -> str:
    p = tmp / "p.yaml"
    p.write_text(body if body is not None else BASE_YAML % vocab(tmp))
    return str(p)


def run_args(tmp: Path, pool_path: str, yaml: str | None = None, *sets: str) -> list[str]:
    args = ["--pool", pool_path, "--pipeline", yaml or cfg(tmp)]
    for s in sets:
        args += ["--set", s]
    return args


def good_pool(tmp: Path) -> str:
    return pool(tmp, url=[URL, URL + "?2"], caption=["a dog", "a cat"])


CASES = [
    # ---- pool
    Case("pool with 0 rows", lambda t: run_args(t, pool(t, url=pa.array([], pa.string()),
                                                        caption=pa.array([], pa.string()))),
         ("no usable rows",)),
    Case("missing pool file", lambda t: run_args(t, str(t / "nope.parquet")),
         ("nope.parquet", "no such file")),
    Case("pool is not Parquet", lambda t: put(t / "p.parquet", "a,b\n") or
         run_args(t, str(t / "p.parquet")), ("not a readable Parquet file",)),
    Case("folder without Parquet", lambda t: (t / "empty").mkdir() or
         run_args(t, str(t / "empty")), ("holds no .parquet files",)),
    Case("missing caption column", lambda t: run_args(t, pool(t, url=[URL], text=["a"])),
         ("no caption column", "pool.columns.caption")),
    Case("null caption", lambda t: run_args(t, pool(t, url=[URL, URL], caption=["a", None])),
         ("row 1", "caption is null")),
    Case("empty caption", lambda t: run_args(t, pool(t, url=[URL], caption=[" \t"])),
         ("row 0", "caption is empty")),
    Case("caption of 1 MB", lambda t: run_args(t, pool(t, url=[URL], caption=["x" * 2**20])),
         ("row 0", "caption longer than 65536 bytes")),
    Case("caption with NUL", lambda t: run_args(t, pool(t, url=[URL], caption=["a\x00b"])),
         ("row 0", "NUL")),
    Case("non-string captions", lambda t: run_args(t, pool(t, url=[URL], caption=[3])),
         ("caption column has type int64",)),
    Case("binary captions (not UTF-8 text)", lambda t: run_args(
        t, pool(t, url=[URL], caption=pa.array([b"\xff\xfe"], pa.binary()))),
        ("caption column has type binary",)),
    Case("non-http URL", lambda t: run_args(t, pool(t, url=["file:///etc/passwd"],
                                                    caption=["a"])),
         ("row 0", "url is not http(s)")),
    Case("URL with spaces only", lambda t: run_args(t, pool(t, url=["   "], caption=["a"])),
         ("url is not http(s)",)),
    Case("duplicate uids with different captions", lambda t: run_args(
        t, pool(t, uid=["u1", "u1"], url=[URL, URL], caption=["a dog", "a cat"])),
        ("uid 'u1' names different pairs", "rows 0 and 1")),
    Case("mapped column absent", lambda t: run_args(
        t, good_pool(t), None, "pool.columns={url: URL, caption: TEXT}"),
        ("column 'URL'", "pool.columns.url", "columns are: url, caption")),
    # ---- config
    Case("YAML syntax error", lambda t: run_args(t, good_pool(t), cfg(t, "stages: [match\n")),
         ("YAML syntax error", "line")),
    Case("unknown config key", lambda t: run_args(t, good_pool(t), None, "match.metdata=x"),
         ("match.metdata", "unknown key")),
    Case("out-of-range value", lambda t: run_args(t, good_pool(t), None, "pool.shard_size=0"),
         ("pool.shard_size", "greater than or equal to 1")),
    Case("balance without match", lambda t: run_args(t, good_pool(t), None,
                                                     "stages=[balance]"),
         ("balance needs a match stage before it",)),
    Case("dbp without a target", lambda t: run_args(t, good_pool(t), None, "stages=[prune]",
                                                    "prune.dbp=true"),
         ("prune.dbp", "target_fraction")),
    Case("t <= 0", lambda t: run_args(t, good_pool(t), None, "balance.t=-5"),
         ("balance.t", "greater than 0")),
    # ---- metadata
    Case("metadata with 0 entries", lambda t: run_args(
        t, good_pool(t), cfg(t, BASE_YAML % vocab(t, "", "empty.txt"))), ("empty.txt",)),
    Case("metadata not a list of strings", lambda t: put(t / "m.json", '{"a": 1}') or
         run_args(t, good_pool(t), cfg(t, BASE_YAML % (t / "m.json"))), ("m.json",)),
    Case("metadata with a non-string item", lambda t: put(t / "m.json", '["a", 3]') or
         run_args(t, good_pool(t), cfg(t, BASE_YAML % (t / "m.json"))), ("m.json",)),
    Case("metadata file missing", lambda t: run_args(
        t, good_pool(t), cfg(t, BASE_YAML % (t / "absent.txt"))), ("absent.txt",)),
    Case("gzip metadata that is not gzip", lambda t: put(t / "m.txt.gz", b"nope") or
         run_args(t, good_pool(t), cfg(t, BASE_YAML % (t / "m.txt.gz"))), ("m.txt.gz",)),
]


def _tree(out: Path) -> dict[str, str]:
    if not out.exists():
        return {}
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def _check(result, code: int, needles: tuple[str, ...]) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("curate: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(tmp_path, case):
    args = case.setup(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--out", str(out), *args])
    _check(result, case.code, case.needles)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished text-only run whose files must survive every bad rerun below."""
    from curate.driver import run_pipeline
    from curate.stages.registry import load_pipeline as load_config

    tmp = tmp_path_factory.mktemp("finished")
    p = good_pool(tmp)
    yaml = cfg(tmp)
    out = tmp / "run"
    run_pipeline(load_config(yaml), str(out), pool=p)
    return tmp, p, yaml, out


RUN_CASES = [
    ("different pool settings", ["--set", "pool.shard_size=3"], ("different pool settings",)),
    ("bad override on rerun", ["--set", "match.boundary=nope"], ("match.boundary",)),
    ("pool vanished", ["--pool", "/nonexistent/pool.parquet"], ("no such file",)),
]


@pytest.mark.parametrize("name,extra,needles", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_rerun_leaves_outputs_untouched(finished_run, ray_session, name, extra, needles):
    tmp, p, yaml, out = finished_run
    before = _tree(out)
    args = ["run", "--out", str(out), "--pipeline", yaml]
    if "--pool" not in extra:
        args += ["--pool", p]
    result = CliRunner().invoke(app, args + extra)
    _check(result, 2, needles)
    assert _tree(out) == before


def test_disk_full_and_read_only(finished_run, monkeypatch, tmp_path):
    """A write that fails (ENOSPC, EROFS) is one line naming the path; nothing is lost."""
    import curate.core.io

    tmp, p, yaml, out = finished_run
    before = _tree(out)
    real_replace = curate.core.io.os.replace

    for code in (errno.ENOSPC, errno.EROFS):
        def failing(src, dst, code=code):
            raise OSError(code, __import__("os").strerror(code), dst)

        monkeypatch.setattr(curate.core.io.os, "replace", failing)
        fresh = tmp_path / f"new-{code}"
        result = CliRunner().invoke(app, ["run", "--out", str(fresh), "--pipeline", yaml,
                                          "--pool", p])
        monkeypatch.setattr(curate.core.io.os, "replace", real_replace)
        _check(result, 2, (str(fresh), __import__("os").strerror(code)))
        # no half-written file looks finished, no temporary file is left behind
        assert not list(fresh.rglob("part-*.parquet")) and not list(fresh.rglob(".tmp-*"))
    assert _tree(out) == before


def test_bad_images_are_rows_with_reasons(tmp_path, ray_session):
    """Broken images do not stop a run: each is a failed row with its reason (exit 0)."""
    good = drawn_image(1, (40, 30), "jpg")
    images = [good, b"<!DOCTYPE html><html>login</html>", bomb_png(), good[:50],
              b"GIF89a-but-not-really", gzip.compress(good)]
    p = pool(tmp_path, url=[f"{URL}?{i}" for i in range(6)],
             caption=[f"image {i}" for i in range(6)], image=images)
    yaml = cfg(tmp_path, "stages: [download]\npool: {shard_size: 4}\n")
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "r"), "--pipeline", yaml,
                                      "--pool", p])
    assert result.exit_code == 0, result.output
    t = pq.read_table(tmp_path / "r" / "images")
    pool_t = pq.read_table(tmp_path / "r" / "pool", columns=["uid", "caption"])
    by_uid = dict(zip(pool_t["uid"].to_pylist(), pool_t["caption"].to_pylist()))
    errors = {by_uid[u]: e for u, e in zip(t["uid"].to_pylist(), t["error"].to_pylist())}
    assert errors["image 0"] is None
    assert "HTML page" in errors["image 1"]
    assert "decompression bomb" in errors["image 2"]
    assert "truncated" in errors["image 3"]
    assert "corrupt" in errors["image 4"] and "not an image" in errors["image 5"]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["stages"]["download"][
        "kept"] == 1
