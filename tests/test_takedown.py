"""curate takedown by uid, URL, domain and image; then reruns (and a new pool file) keep the
pairs out of curated/ Parquet and tars."""

from __future__ import annotations

import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import curated, encode_image, photo
from typer.testing import CliRunner

from curate.cli import app
from curate.driver import run_pipeline

HOSTS = ["a.example.com", "cdn.example.com", "badexample.com", "other.org"]


def _write_pool(path, start: int, n: int, hosts=HOSTS):
    rows = [(f"http://{hosts[i % len(hosts)]}/img{i}.png", f"photo {i}",
             encode_image(photo(300 + i))) for i in range(start, start + n)]
    pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows],
                             "image": pa.array([r[2] for r in rows], pa.binary())}), path)


def _curated(run) -> dict[str, str]:
    t = curated(run)
    return dict(zip(t["caption"].to_pylist(), t["uid"].to_pylist()))


def _tar_keys(run) -> set[str]:
    keys = set()
    for p in (run / "curated" / "wds").glob("*.tar"):
        with tarfile.open(p) as tar:
            keys |= {m.name.split(".")[0] for m in tar.getmembers()}
    return keys


@pytest.fixture
def run(tmp_path, ray_session):
    pool = tmp_path / "pool"
    pool.mkdir()
    _write_pool(pool / "a.parquet", 0, 12)
    cfg = base_config(stages=["download", "emit"], pool={"shard_size": 5},
                      emit={"rows_per_shard": 4, "webdataset": True})
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=str(pool))
    return out, cfg, pool


def _takedown(out, *args):
    r = CliRunner().invoke(app, ["takedown", str(out), *args, "--why", "test request"])
    assert r.exit_code == 0, r.output
    return r.output


def test_each_selector_then_reruns_keep_pairs_out(run, tmp_path):
    out, cfg, pool = run
    before = _curated(out)
    assert len(before) == 12 and _tar_keys(out) == set(before.values())
    (tmp_path / "uids.txt").write_text(f"{before['photo 3']}\n{before['photo 7']}\n")
    _takedown(out, "--uids", str(tmp_path / "uids.txt"))
    (tmp_path / "domains.txt").write_text("# comment\nEXAMPLE.com\n")
    _takedown(out, "--domains", str(tmp_path / "domains.txt"))
    (tmp_path / "urls.txt").write_text("http://other.org/img11.png\n")
    _takedown(out, "--urls", str(tmp_path / "urls.txt"))
    images = tmp_path / "req"
    images.mkdir()
    (images / "copy.png").write_bytes(encode_image(photo(300 + 2).resize((80, 60))))  # badexample
    _takedown(out, "--images", str(images))
    gone = {"photo 3", "photo 7", "photo 2", "photo 11"} | {
        f"photo {i}" for i in range(12) if HOSTS[i % 4].endswith(".example.com")}
    assert "photo 6" not in gone and "photo 10" not in gone  # badexample.com stays
    after = _curated(out)
    assert set(after) == set(before) - gone
    assert _tar_keys(out) == set(after.values())
    removed = pq.read_table(out / "takedown" / "removed.parquet").to_pylist()
    assert {r["uid"] for r in removed} == {before[c] for c in gone}
    rules = {r["uid"]: r["rule"] for r in removed}
    assert rules[before["photo 3"]] == f"uid:{before['photo 3']}"
    assert rules[before["photo 0"]] == "domain:example.com"
    assert rules[before["photo 2"]].startswith("phash:")
    assert all(r["why"] == "test request" for r in removed)
    # a rerun, and a new pool file with a pair on a taken-down domain: still out
    _write_pool(pool / "b.parquet", 12, 4)
    run_pipeline(cfg, str(out), pool=str(pool))
    final = _curated(out)
    assert set(final) == (set(before) - gone) | {"photo 14", "photo 15"}
    assert _tar_keys(out) == set(final.values())


def test_bad_requests_are_one_line(run, tmp_path):
    out, _, _ = run
    r = CliRunner().invoke(app, ["takedown", str(out)])
    assert r.exit_code == 2 and "--uids" in r.output
    r = CliRunner().invoke(app, ["takedown", str(out), "--uids", str(tmp_path / "none.txt")])
    assert r.exit_code == 2 and "none.txt" in r.output
