"""``curate explore``'s JSON API and exports on the offline example run (indexed with
``curate index``), checked against references computed here from the run's Parquet files:
neighbours against brute-force NumPy, filters against the stages' own rows, an exported
subset against ``curate takedown``'s removal manifest."""

from __future__ import annotations

import io
import socket
import urllib.parse

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from explore_helpers import Served, exact_neighbours, indexed_copy, multipart, read_parts
from typer.testing import CliRunner

from curate.cli import app


@pytest.fixture(scope="module")
def served(example_run, tmp_path_factory):
    run = indexed_copy(example_run[0], tmp_path_factory.mktemp("explore") / "run", "all")
    s = Served(run)
    s.run = run
    yield s
    s.close()


def _q(**kw) -> str:
    return urllib.parse.urlencode(kw)


def test_neighbours_equal_the_exact_oracle(served):
    oracle = exact_neighbours(served.run, 10)
    queries = sorted(oracle)[:: max(1, len(oracle) // 25)]
    found = total = 0
    for uid in queries:
        status, body = served.json(f"/api/neighbors?{_q(uid=uid, k=10)}")
        assert status == 200, body
        got = [n["uid"] for n in body["neighbors"]]
        scores = [n["score"] for n in body["neighbors"]]
        assert len(got) == 10 and uid not in got
        assert scores == sorted(scores, reverse=True)
        found += len(set(got) & set(oracle[uid]))
        total += 10
    assert found / total >= 0.95, f"recall {found / total:.3f}"


def test_filters_select_what_the_stage_files_say(served):
    run = served.run
    prune = read_parts(run / "prune", ["uid", "kept", "reason", "cluster_id"])
    quota = set(prune.filter(pc.equal(prune["reason"], "over_cluster_quota"))["uid"].to_pylist())
    status, body = served.json(f"/api/pairs?{_q(reason='over_cluster_quota', limit=1000)}")
    assert status == 200 and body["total"] == len(quota) > 0
    assert {r["uid"] for r in body["rows"]} == quota
    assert all(r["chain"][-1] == {"stage": "prune", "kept": False,
                                  "reason": "over_cluster_quota", "detail": None}
               for r in body["rows"])
    # a score range and an SQL condition together, against scores/ and curated/
    scores = read_parts(run / "scores", ["uid", "clip_score"])
    curated = set(read_parts(run / "curated", ["uid"])["uid"].to_pylist())
    high = {u for u, s in zip(scores["uid"].to_pylist(), scores["clip_score"].to_pylist())
            if s is not None and s >= 0.25}
    status, body = served.json("/api/pairs?" + _q(min_clip_score=0.25, where="kept",
                                                  limit=1000))
    assert status == 200 and {r["uid"] for r in body["rows"]} == high & curated
    # one cluster, then paging through it
    c = prune.filter(pc.equal(prune["cluster_id"], 0))
    status, body = served.json(f"/api/pairs?{_q(cluster=0, limit=5, offset=5)}")
    assert body["total"] == c.num_rows
    assert [r["uid"] for r in body["rows"]] == sorted(c["uid"].to_pylist())[5:10]


@pytest.mark.parametrize("where", ["kept) UNION ALL (SELECT * FROM decisions",
                                   "kept; DROP VIEW pool", "kept) ORDER BY (uid"])
def test_where_is_one_condition_on_the_rows(served, where):
    status, body = served.json(f"/api/pairs?{_q(where=where)}")
    assert status == 400 and "\n" not in body["error"] and body["error"].startswith("where:")


def test_search_by_an_image_finds_its_own_pair(served, tmp_path):
    images = read_parts(served.run / "images", ["uid", "image", "kept"])
    images = images.filter(images["kept"])
    uid, data = images["uid"][3].as_py(), images["image"][3].as_py()
    body, headers = multipart({"k": "5"}, {"image": ("q.jpg", data)})
    status, res = served.json("/api/search", body, headers)
    assert status == 200, res
    top = res["rows"][0]["similarity"]
    assert uid in {r["uid"] for r in res["rows"] if r["similarity"] >= top - 1e-3}
    assert top > 0.99 and res["mode"] == "image"
    path = tmp_path / "q.img"
    path.write_bytes(data)
    status, res2 = served.json(f"/api/search?{_q(path=str(path), k=5)}")
    assert status == 200 and [r["uid"] for r in res2["rows"]] == [r["uid"] for r in res["rows"]]


def test_text_search_says_why_it_is_off(served, monkeypatch):
    status, info = served.json("/api/info")
    assert info["model"]["image"] and not info["model"]["text"]
    status, body = served.json(f"/api/search?{_q(text='a red circle')}")
    assert status == 400 and "random weights" in body["error"]
    # the code path real weights take (its answers mean nothing with random ones)
    monkeypatch.setitem(served.ex.searcher.model, "text", True)
    status, body = served.json(f"/api/search?{_q(text='a red circle', k=7)}")
    assert status == 200 and body["mode"] == "text" and len(body["rows"]) == 7


def test_pair_api_and_unknown_uids(served):
    uid = read_parts(served.run / "curated", ["uid"])["uid"][0].as_py()
    status, body = served.json(f"/api/pair/{uid}")
    assert status == 200 and body["row"]["kept"] is True
    assert [c["stage"] for c in body["chain"]] == ["download", "score", "balance", "prune"]
    assert {"pool", "images", "scores", "prune"} <= set(body["stages"])
    assert served.json("/api/pair/not-a-uid")[0] == 404
    assert served.json(f"/api/neighbors?{_q(uid='not-a-uid')}")[0] == 404


def test_exported_subset_feeds_takedown(served, tmp_path):
    seed = read_parts(served.run / "curated", ["uid"])["uid"][1].as_py()
    status, res = served.json(f"/api/search?{_q(uid=seed, k=8)}")
    shown = [r["uid"] for r in res["rows"]]
    status, data, headers = served.get(f"/export/file?{_q(uid=seed, k=8, format='uids')}")
    assert status == 200 and "attachment" in headers["content-disposition"]
    assert data.decode().splitlines() == shown
    status, pq_data, _ = served.get(f"/export/file?{_q(uid=seed, k=8, format='parquet')}")
    assert pq.read_table(io.BytesIO(pq_data))["uid"].to_pylist() == shown
    status, pool_data, _ = served.get(f"/export/file?{_q(uid=seed, k=8, format='pool')}")
    pool = pq.read_table(io.BytesIO(pool_data))
    assert pool["uid"].to_pylist() == shown and "url" in pool.column_names
    status, csv_data, _ = served.get(f"/export/file?{_q(uid=seed, k=8, format='csv')}")
    assert csv_data.decode().splitlines()[0].startswith('"uid"')
    listed = tmp_path / "subset-uids.txt"
    listed.write_bytes(data)
    r = CliRunner().invoke(app, ["takedown", str(served.run), "--uids", str(listed),
                                 "--why", "explore test"])
    assert r.exit_code == 0, r.output
    removed = pq.read_table(served.run / "takedown" / "removed.parquet")
    assert set(removed["uid"].to_pylist()) == set(shown)
    assert not set(read_parts(served.run / "curated", ["uid"])["uid"].to_pylist()) & set(shown)


def test_cli_errors_are_one_line_exit_2(example_run, served, tmp_path):
    r = CliRunner().invoke(app, ["explore", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a run directory" in r.output
    r = CliRunner().invoke(app, ["explore", str(example_run[0])])  # never indexed
    assert r.exit_code == 2 and f"curate index {example_run[0]}" in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(app, ["explore", str(served.run), "--port", str(port)])
    assert r.exit_code == 2 and "--port" in r.output
    assert np.sum([line.startswith("curate: error") for line in r.output.splitlines()]) == 1
