"""emit: curated shards hold exactly the kept pairs, byte-identical images, WebDataset."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest
from conftest import base_config, pool_rows, write_pool
from helpers import curated

from curate.app.query import connect
from curate.driver import run_pipeline


@pytest.fixture(scope="module")
def emitted(tmp_path_factory, image_server, ray_session):
    tmp = tmp_path_factory.mktemp("emit")
    vocab = tmp / "vocab.txt"
    vocab.write_text("picture\nthing\nnumber\ngone\n")
    rows = pool_rows(image_server)
    for i, r in enumerate(rows):
        r["caption"] = ["a picture of a thing", "number 5", "just words"][i % 3]
    pool = write_pool(tmp / "pool.parquet", rows)
    cfg = base_config(stages=["download", "match", "balance", "emit"],
                      match={"metadata": str(vocab)}, balance={"t": 5, "seed": 1},
                      emit={"rows_per_shard": 4, "webdataset": True})
    out = tmp / "run"
    run_pipeline(cfg, str(out), pool=pool)
    return out, cfg, pool, image_server


def test_curated_is_exactly_the_kept_set(emitted):
    out, _, _, server = emitted
    cur = curated(out)
    con = connect(str(out))
    kept = {r[0] for r in con.execute("SELECT uid FROM decisions WHERE kept").fetchall()}
    assert set(cur["uid"].to_pylist()) == kept and cur.num_rows == len(kept) > 0
    assert con.execute("SELECT count(*) FROM curated").fetchone()[0] == len(kept)
    # every column of a kept pair: pool, images, match
    for col in ("uid", "url", "caption", "extra", "image", "width", "height", "entry_ids"):
        assert col in cur.column_names
    for r in cur.to_pylist():
        path = "/" + r["url"].split("/", 3)[3]
        body = server.routes["/ok/0.jpg" if path == "/redirect.jpg" else path].body
        assert r["image"] == body and r["sha256"] == hashlib.sha256(body).hexdigest()
    sizes = [pq.read_metadata(p).num_rows for p in sorted((out / "curated")
                                                           .glob("part-*.parquet"))]
    assert all(s == 4 for s in sizes[:-1]) and 0 < sizes[-1] <= 4
    # decisions: one row per pool uid, every dropped one says where and why
    n_pool = con.execute("SELECT count(*) FROM pool").fetchone()[0]
    assert con.execute("SELECT count(*), count(DISTINCT uid) FROM decisions").fetchone() == (
        n_pool, n_pool)
    assert con.execute("SELECT count(*) FROM decisions WHERE NOT kept AND (dropped_by IS NULL "
                   "OR reason IS NULL)").fetchone()[0] == 0
    reasons = {r[0] for r in con.execute("SELECT DISTINCT dropped_by FROM decisions").fetchall()}
    assert reasons >= {"download", "balance", None}


def test_webdataset_reads_back(emitted):
    import webdataset as wds

    out, *_ = emitted
    cur = {r["uid"]: r for r in curated(out).to_pylist()}
    tars = sorted(str(p) for p in (out / "curated" / "wds").glob("*.tar"))
    seen = 0
    for sample in wds.WebDataset(tars, shardshuffle=False):
        r = cur[sample["__key__"]]
        assert sample["txt"].decode() == r["caption"]
        assert sample[r["format"]] == r["image"]
        seen += 1
    assert seen == len(cur)


def test_emit_is_idempotent(emitted):
    out, cfg, pool, _ = emitted
    files = sorted((out / "curated").rglob("*.*"))
    before = {p.name: p.read_bytes() for p in files}
    (out / "curated" / "part-00001.parquet").unlink()
    run_pipeline(cfg, str(out), pool=pool)
    after = {p.name: p.read_bytes() for p in sorted((out / "curated").rglob("*.*"))}
    assert after == before
