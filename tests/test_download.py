"""The download stage end to end: real HTTP on loopback, img2dataset, the run directory."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import EXPECTED_ERRORS, base_config, pool_rows, write_pool

from curate.driver import run_pipeline
from curate.errors import FailedShardsError


def _images(out) -> pa.Table:
    return pq.read_table(f"{out}/images")


def _pool(out) -> pa.Table:
    return pq.read_table(f"{out}/pool")


def test_download_end_to_end(tmp_path, image_server, ray_session):
    rows = pool_rows(image_server)
    pool = write_pool(tmp_path / "pool.parquet", rows)
    out = tmp_path / "run"
    manifest = run_pipeline(base_config(), str(out), pool=pool)

    images = _images(out)
    pooled = _pool(out)
    # every input row accounted for, once
    assert images.num_rows == len(rows) == pooled.num_rows
    assert sorted(images["uid"].to_pylist()) == sorted(pooled["uid"].to_pylist())
    assert set(pooled.column_names) >= {"uid", "url", "caption", "extra"}

    by_url = dict(zip(pooled["uid"].to_pylist(), pooled["url"].to_pylist()))
    for r in images.to_pylist():
        path = "/" + by_url[r["uid"]].split("/", 3)[3]
        if path.startswith("/ok/") or path == "/redirect.jpg":
            served = image_server.routes["/ok/0.jpg" if path == "/redirect.jpg" else path].body
            assert r["status"] == "ok", (path, r["error"])
            assert r["image"] == served  # original bytes, not re-encoded
            assert r["sha256"] == hashlib.sha256(served).hexdigest()
            assert r["width"] > 0 and r["height"] > 0
            assert r["kept"] and r["reason"] is None
        else:
            assert r["status"] == "failed" and r["image"] is None and not r["kept"]
            assert EXPECTED_ERRORS[path].lower() in r["error"].lower(), (path, r["error"])
            assert r["reason"] == "download_failed" and r["detail"] == r["error"]
    st = manifest["stages"]["download"]
    assert st["status"] == "done"
    assert st["rows_in"] == len(rows)
    assert st["kept"] == sum(1 for r in images.to_pylist() if r["status"] == "ok")


def test_uids_stable_across_runs_and_shard_sizes(tmp_path, image_server, ray_session):
    rows = [r for r in pool_rows(image_server) if "/ok/" in r["url"]][:10]
    pool = write_pool(tmp_path / "pool.parquet", rows)
    a = tmp_path / "a"
    b = tmp_path / "b"
    run_pipeline(base_config(), str(a), pool=pool)
    run_pipeline(base_config(pool={"shard_size": 3}), str(b), pool=pool)
    ua = _images(a).sort_by("uid")
    ub = _images(b).sort_by("uid")
    assert ua["uid"].equals(ub["uid"])
    assert ua["sha256"].equals(ub["sha256"])
    assert len(list((b / "images").glob("part-*.parquet"))) == 4
    expected = hashlib.sha256(f"{rows[0]['url']}\n{rows[0]['caption']}".encode()).hexdigest()[:32]
    assert expected in ua["uid"].to_pylist()


def test_private_addresses_refused_by_default(tmp_path, image_server, ray_session):
    rows = [r for r in pool_rows(image_server) if "/ok/" in r["url"]][:3]
    pool = write_pool(tmp_path / "pool.parquet", rows)
    out = tmp_path / "run"
    paths = ["/" + r["url"].split("/", 3)[3] for r in rows]
    before = {p: image_server.hits.get(p, 0) for p in paths}
    run_pipeline(base_config(download={"allow_private_addresses": False}), str(out), pool=pool)
    images = _images(out)
    assert images["status"].to_pylist() == ["failed"] * 3
    assert all("refused private/loopback" in e for e in images["error"].to_pylist())
    assert {p: image_server.hits.get(p, 0) for p in paths} == before  # never contacted


def test_resume_after_failed_shard_downloads_nothing_twice(tmp_path, image_server, ray_session,
                                                           monkeypatch):
    rows = [r for r in pool_rows(image_server) if "/ok/" in r["url"]]
    # a fresh path prefix per test so hit counts are this test's own
    for r in rows:
        r["url"] = r["url"] + "?resume"
    pool = write_pool(tmp_path / "pool.parquet", rows)
    out = tmp_path / "run"
    before = dict(image_server.hits)
    monkeypatch.setenv("CURATE_FAULT", "download:1:raise")
    with pytest.raises(FailedShardsError):
        run_pipeline(base_config(), str(out), pool=pool)
    shards = sorted(p.name for p in (out / "images").glob("part-*.parquet"))
    assert "part-00001.parquet" not in shards and len(shards) == 2

    monkeypatch.delenv("CURATE_FAULT")
    uninterrupted = tmp_path / "clean"
    manifest = run_pipeline(base_config(), str(out), pool=pool)
    assert manifest["stages"]["download"]["shards_skipped"] == 2
    run_pipeline(base_config(), str(uninterrupted), pool=pool)
    a, b = _images(out).sort_by("uid"), _images(uninterrupted).sort_by("uid")
    assert a.select(["uid", "sha256", "status"]).equals(b.select(["uid", "sha256", "status"]))
    # each image fetched once by the interrupted+resumed run, once by the clean run
    for path in {"/" + r["url"].split("/", 3)[3].split("?")[0] for r in rows}:
        assert image_server.hits[path] - before.get(path, 0) == 2, path


def test_retry_failed_refetches_only_failures(tmp_path, image_server, ray_session):
    from curate.media.loopback import Route

    image_server.routes["/flaky.jpg"] = Route(status=503)
    rows = [r for r in pool_rows(image_server) if "/ok/1." in r["url"]]
    rows.append({"url": image_server.url("/flaky.jpg"), "caption": "flaky", "extra": 0})
    pool = write_pool(tmp_path / "pool.parquet", rows)
    out = tmp_path / "run"
    # the 503 is tried three times (polite.http_retries), with short back-offs between
    cfg = base_config(download={"polite": {"backoff_s": 0.05}})
    run_pipeline(cfg, str(out), pool=pool)
    assert sorted(_images(out)["status"].to_pylist()) == ["failed", "ok"]
    assert image_server.hits["/flaky.jpg"] == 3
    ok_hits = image_server.hits["/ok/1.png"]
    image_server.routes["/flaky.jpg"] = image_server.routes["/ok/1.png"]
    run_pipeline(cfg, str(out), pool=pool)  # plain rerun: finished shard, nothing fetched
    assert sorted(_images(out)["status"].to_pylist()) == ["failed", "ok"]
    run_pipeline(cfg, str(out), only=["download"],
                 options={"download": {"retry_failed": True}})
    assert _images(out)["status"].to_pylist() == ["ok", "ok"]
    assert image_server.hits["/ok/1.png"] == ok_hits  # the success was not fetched again


def test_stuck_worker_times_out_and_run_exits_3(tmp_path, image_server, ray_session,
                                                monkeypatch):
    """A hung shard is cancelled at run.shard_timeout_s, retried, then recorded as failed;
    the other shards finish and the run ends with exit code 3 (not a hang).

    The pool brings each pair's bytes, so no shard imports img2dataset (seconds in a fresh
    worker): the other shard ends far within the short time limit the hung one waits out."""
    from curate.errors import EXIT_FAILED_SHARDS

    rows = [r for r in pool_rows(image_server) if "/ok/" in r["url"]][:12]
    for r in rows:
        r["image"] = image_server.routes["/" + r["url"].split("/", 3)[3]].body
    pool = write_pool(tmp_path / "pool.parquet", rows)
    out = tmp_path / "run"
    monkeypatch.setenv("CURATE_FAULT", "download:0:hang")
    with pytest.raises(FailedShardsError) as info:  # returns: the hang was cancelled
        run_pipeline(base_config(run={"shard_timeout_s": 8, "max_retries": 0}), str(out),
                     pool=pool)
    assert info.value.exit_code == EXIT_FAILED_SHARDS
    import json

    st = json.loads((out / "run.json").read_text())["stages"]["download"]
    assert st["failed_shards"] == ["part-00000.parquet"]
    assert "timed out after 8 s" in st["errors"]["part-00000.parquet"]
    assert sorted(p.name for p in (out / "images").glob("part-*")) == ["part-00001.parquet"]
