"""Consent before fetching (robots.txt, TDMRep, denylists) and polite crawling (per-host cap,
429/503 with Retry-After): unit tests on loopback servers, then the stage end to end.

Each loopback server is its own origin (its port), so one machine plays several hosts.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config, drawn_image, write_pool
from helpers import curated

from curate.driver import run_pipeline
from curate.media import polite, robots
from curate.media.loopback import LoopbackServer, Route

ROBOTS = (b"User-agent: img2dataset\nDisallow: /private/\nAllow: /private/ok\n\n"
          b"User-agent: *\nDisallow: /\n")
JPG = drawn_image(3, (40, 30), "jpg")


def _rec(srv, robots_=True, tdmrep=True, timeout=2.0):
    return robots.fetch(robots.origin(srv.url("/")), timeout, None, robots_, tdmrep)


# ---------------------------------------------------------------- robots.txt and TDMRep

def test_robots_rules_allow_and_disallow():
    with LoopbackServer({"/robots.txt": Route(ROBOTS, "text/plain")}) as srv:
        rec = _rec(srv)
        v = robots.Verdicts("img2dataset")
        assert rec["robots"]["state"] == "ok"
        assert v.robots(rec, srv.url("/a.jpg")) is None
        assert v.robots(rec, srv.url("/private/x.jpg")) == (
            f"robots.txt of {rec['origin']} disallows /private/x.jpg for img2dataset")
        assert v.robots(rec, srv.url("/private/ok.jpg")) is None  # longest match: Allow
        # another token falls to the * group
        assert robots.Verdicts("otherbot").robots(rec, srv.url("/a.jpg")) is not None


@pytest.mark.parametrize("route, state, allowed", [
    (None, "missing", True),                                         # 404: allow all
    (Route(status=403), "missing", True),                            # 4xx: allow all
    (Route(b"<html><body>Welcome</body></html>", "text/html"), "ok", True),  # HTML
    (Route(status=503), "unreachable", False),                       # 5xx: disallow all
    (Route(ROBOTS, "text/plain", delay_s=3), "unreachable", False),  # timeout
])
def test_robots_unavailable_unreachable_html(route, state, allowed):
    routes = {"/robots.txt": route} if route is not None else {}
    with LoopbackServer(routes) as srv:
        rec = _rec(srv, tdmrep=False, timeout=0.5)
        assert rec["robots"]["state"] == state
        why = robots.Verdicts("img2dataset").robots(rec, srv.url("/a.jpg"))
        assert (why is None) == allowed, why
        if state == "unreachable":  # documented switch: treat unreachable as allow
            assert robots.Verdicts("img2dataset", "allow").robots(rec, srv.url("/a")) is None
        if route is not None and route.content_type == "text/html":
            assert rec["robots"]["html"]


def test_tdmrep_file_first_matching_rule_decides():
    rules = [{"location": "/free/*", "tdm-reservation": 0},
             {"location": "/*.png$", "tdm-reservation": 1},
             {"location": "/", "tdm-reservation": 1, "tdm-policy": "https://x.test/p.json"}]
    with LoopbackServer({"/.well-known/tdmrep.json":
                         Route(json.dumps(rules).encode(), "application/json")}) as srv:
        rec = _rec(srv, robots_=False)
        v = robots.Verdicts("img2dataset")
        assert v.tdm(rec, srv.url("/free/a.jpg")) is None
        assert "reserves TDM rights for /*.png$" in v.tdm(rec, srv.url("/a/b.png"))
        assert "policy https://x.test/p.json" in v.tdm(rec, srv.url("/a/b.jpg"))
    with LoopbackServer({"/.well-known/tdmrep.json": Route(b"{not json")}) as srv:
        rec = _rec(srv, robots_=False)
        assert rec["tdmrep"]["state"] == "invalid"
        assert robots.Verdicts("x").tdm(rec, srv.url("/a.jpg")) is None


def test_origin_and_cache_name():
    assert robots.origin("HTTP://Example.COM:80/a?b") == "http://example.com"
    assert robots.origin("https://a.test:8443/x") == "https://a.test:8443"
    assert robots.origin("ftp://a.test/x") is None
    assert robots.cache_name("http://[::1]:8080") == "http-___1__8080.json"


# ---------------------------------------------------------------- polite fetching

def test_retry_after_parsing():
    assert polite.retry_after("7", 1.0) == 7.0
    assert polite.retry_after(None, 1.5) == 1.5
    assert polite.retry_after("garbage", 2.0) == 2.0
    assert polite.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 3.0) == 0.0  # in the past


def test_interleave_round_robin_by_host():
    urls = ["http://a/1", "http://a/2", "http://a/3", "http://b/1", "http://c/1", "http://b/2"]
    hosts = [polite.host_of(u) for u in urls]
    assert polite.interleave(list(range(6)), hosts) == [0, 3, 4, 1, 5, 2]


class _Clock:
    """polite's clock in a test: a sleep moves it on at once and is added up (no waiting,
    and how long polite would have waited can be checked)."""

    def __init__(self):
        self.now, self.slept = 1000.0, 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept += s
        self.now += s


def test_429_with_retry_after_is_retried_after_the_delay(monkeypatch):
    route = Route(JPG, "image/jpeg",
                  first=[Route(status=429, headers={"Retry-After": "3"})])
    clock = _Clock()
    monkeypatch.setattr(polite, "time", clock)
    with LoopbackServer({"/busy.jpg": route}) as srv:
        policy = polite.Policy(per_host=2)
        with polite.active(policy):
            key, stream, err = polite.download((0, srv.url("/busy.jpg")), 2, 0, None, None)
        assert err is None and stream.getvalue() == JPG
        assert srv.hits["/busy.jpg"] == 2 and policy.stats == {"127.0.0.1": 1}
        assert clock.slept == pytest.approx(3.0)  # Retry-After (not backoff_s), then the retry
        # without retries left the 429 is the error
        srv.hits.clear()
        with polite.active(polite.Policy(http_retries=0)):
            _, stream, err = polite.download((0, srv.url("/busy.jpg")), 2, 0, None, None)
        assert stream is None and "429" in err


def test_per_host_cap_holds_across_threads():
    routes = {f"/{i}.jpg": Route(JPG, "image/jpeg", delay_s=0.05) for i in range(16)}
    with LoopbackServer(routes) as srv:
        policy = polite.Policy(per_host=2)
        with polite.active(policy), ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda i: polite.download((i, srv.url(f"/{i}.jpg")), 5, 0,
                                                        None, None), range(16)))
        assert all(err is None for _, _, err in got)
        assert srv.peak <= 2


def test_tdm_reservation_header_refuses_before_reading():
    with LoopbackServer({"/r.jpg": Route(JPG, "image/jpeg",
                                         headers={"tdm-reservation": "1"})}) as srv:
        with polite.active(polite.Policy()):
            _, stream, err = polite.download((0, srv.url("/r.jpg")), 2, 0, None, None)
        assert stream is None and err == polite.TDM_HEADER


# ---------------------------------------------------------------- the stage end to end

@pytest.fixture(scope="module")
def hosts():
    """Five origins: rules, TDMRep, unreachable robots.txt, HTML robots.txt, 429."""
    img = {f"/{d}/{i}.jpg": Route(drawn_image(i + 40 * k, (40 + i, 30), "jpg"), "image/jpeg")
           for k, d in enumerate(("public", "private", "free", "reserved")) for i in range(3)}
    a = LoopbackServer({**img, "/robots.txt": Route(ROBOTS, "text/plain"),
                        "/hdr.jpg": Route(JPG, "image/jpeg",
                                          headers={"tdm-reservation": "1"})})
    b = LoopbackServer({**img, "/.well-known/tdmrep.json": Route(json.dumps(
        [{"location": "/reserved/*", "tdm-reservation": 1}]).encode(), "application/json")})
    c = LoopbackServer({**img, "/robots.txt": Route(status=503)})
    d = LoopbackServer({**img, "/robots.txt": Route(b"<!DOCTYPE html><p>hi</p>", "text/html")})
    e = LoopbackServer({"/busy.jpg": Route(JPG, "image/jpeg", first=[  # 429: retry at once
        Route(status=429, headers={"Retry-After": "0"})])})
    servers = [s.start() for s in (a, b, c, d, e)]
    yield servers
    for s in servers:
        s.stop()


def test_stage_consent_end_to_end(tmp_path, hosts, ray_session):
    a, b, c, d, e = hosts
    rows = [(a, "/public/0.jpg"), (a, "/private/1.jpg"), (a, "/hdr.jpg"),
            (b, "/public/1.jpg"), (b, "/reserved/2.jpg"), (c, "/public/0.jpg"),
            (d, "/private/0.jpg"), (d, "/free/1.jpg"), (d, "/free/2.jpg"),
            (e, "/busy.jpg"), (a, "/public/2.jpg"), (b, "/free/0.jpg")]
    pool = write_pool(tmp_path / "pool.parquet", [
        {"url": s.url(p), "caption": f"pair {i}"} for i, (s, p) in enumerate(rows)]
        # server a again, as origin http://localhost:<port>: a denylisted domain
        + [{"url": f"http://localhost:{a.port}/public/1.jpg", "caption": "denied domain"}])
    domains = tmp_path / "domains.txt"
    domains.write_text("localhost\n")
    deny = tmp_path / "patterns.txt"
    deny.write_text("# no free images from d\n" + rf"127\.0\.0\.1:{d.port}/free/1" + "\n")
    sha = tmp_path / "sha.txt"
    import hashlib

    sha.write_text(hashlib.sha256(d.routes["/free/2.jpg"].body).hexdigest() + "\n")
    before = {id(s): dict(s.hits) for s in hosts}
    cfg = base_config(stages=["download", "emit"], pool={"shard_size": 4},
                      download={"denylist": {"url_patterns": str(deny), "sha256": str(sha),
                                             "domains": str(domains)},
                                "polite": {"retry_after_max_s": 5}})
    out = tmp_path / "run"
    m = run_pipeline(cfg, str(out), pool=pool)
    t = pq.read_table(out / "images").to_pylist()
    pool_t = pq.read_table(out / "pool").select(["uid", "url"]).to_pylist()
    url_of = {r["uid"]: r["url"] for r in pool_t}
    got = {url_of[r["uid"]]: (r["reason"], r["detail"]) for r in t}
    want = {
        a.url("/public/0.jpg"): None, a.url("/private/1.jpg"): "robots_disallowed",
        a.url("/hdr.jpg"): "tdm_reserved", b.url("/public/1.jpg"): None,
        b.url("/reserved/2.jpg"): "tdm_reserved", c.url("/public/0.jpg"): "robots_disallowed",
        d.url("/private/0.jpg"): None, d.url("/free/1.jpg"): "denylisted",
        d.url("/free/2.jpg"): "denylisted", e.url("/busy.jpg"): None,
        a.url("/public/2.jpg"): None, b.url("/free/0.jpg"): None,
        f"http://localhost:{a.port}/public/1.jpg": "denylisted",
    }
    assert {u: r for u, (r, _) in got.items()} == want
    assert "unreachable" in got[c.url("/public/0.jpg")][1]
    assert got[d.url("/free/2.jpg")][1].startswith("sha256:")
    st = m["stages"]["download"]
    assert st["dropped"] == {"robots_disallowed": 2, "tdm_reserved": 2, "denylisted": 3}
    assert got[f"http://localhost:{a.port}/public/1.jpg"][1] == "domain:localhost"

    def hits(s, path):
        return s.hits.get(path, 0) - before[id(s)].get(path, 0)
    # refused pairs were never requested; consent files fetched once per origin (3 shards)
    assert hits(a, "/private/1.jpg") == hits(b, "/reserved/2.jpg") == 0
    assert hits(c, "/public/0.jpg") == hits(d, "/free/1.jpg") == 0
    assert hits(d, "/free/2.jpg") == 1  # sha256 is known only after the fetch
    assert hits(a, "/public/1.jpg") == 0  # the denylisted domain: not even its robots.txt
    assert all(hits(s, "/robots.txt") == 1 for s in (a, b, c, d, e))
    assert all(hits(s, "/.well-known/tdmrep.json") == 1 for s in (a, b, c, d, e))
    assert hits(e, "/busy.jpg") == 2  # 429 then the image
    assert len(list((out / "images" / "_robots").glob("http-*.json"))) == 5
    # emit leaves out nothing download kept; the denylist file is where emit reads it
    assert curated(out).num_rows == 6
    assert pq.read_table(out / "denylist" / "rules.parquet").num_rows == 3

    # per-host statistics, as the report's count step would gather them
    from curate.core.rundir import RunDir
    from curate.stages import _report_hosts as rh

    rd, acc = RunDir(str(out)), {}
    for shard in sorted(p.name for p in (out / "pool").glob("part-*")):
        rh.merge(acc, rh.shard_host_counts(rd, "images", shard))
    table = rh.write_host_failures(rd, "reports/host_failures.parquet", acc)
    assert table.equals(pq.read_table(out / "reports" / "host_failures.parquet"))
    assert acc == {"127.0.0.1": {"pairs": 12, "failed": 6, "robots_disallowed": 2,
                                 "tdm_reserved": 2, "denylisted": 2},
                   "localhost": {"pairs": 1, "failed": 1, "denylisted": 1}}
    top = rh.top_failing_hosts(table)
    assert [t["host"] for t in top] == ["127.0.0.1", "localhost"]
    assert top[0]["failure_rate"] == 0.5
    assert rh.cause("download_failed", "HTTP Error 404: Not Found") == "http_404"
    assert rh.cause("download_failed", "<urlopen error timed out>") == "timeout"


def test_emit_applies_denylist_file(tmp_path, hosts, ray_session):
    """A denylist rule emit sees (denylist/rules.parquet) leaves the pair out of curated/,
    also when download kept it; takedown's own rules file stays untouched."""
    from curate.core.rundir import RunDir
    from curate.stages._denylist import DENYLIST, RULE_SCHEMA, load_all_rules, load_rules

    a = hosts[0]
    pool = write_pool(tmp_path / "pool.parquet", [
        {"url": a.url(f"/public/{i}.jpg"), "caption": f"pic {i}"} for i in range(3)])
    out = tmp_path / "run"
    cfg = base_config(stages=["download", "emit"])
    run_pipeline(cfg, str(out), pool=pool)
    assert curated(out).num_rows == 3
    rd = RunDir(str(out))
    (out / "denylist").mkdir()
    pq.write_table(pa.table({"kind": ["url"], "value": [a.url("/public/1.jpg")],
                             "added": ["now"], "why": ["test"]}, schema=RULE_SCHEMA),
                   rd.path(DENYLIST))
    assert load_rules(rd) is None and load_all_rules(rd).num_rows == 1
    run_pipeline(cfg, str(out), pool=pool)  # download reused; emit always reruns
    cur = curated(out)
    assert cur.num_rows == 2
    assert a.url("/public/1.jpg") not in cur["url"].to_pylist()


def test_consent_off_asks_for_no_consent_file(tmp_path, hosts, ray_session):
    a = hosts[0]
    pool = write_pool(tmp_path / "pool.parquet", [
        {"url": a.url("/private/2.jpg"), "caption": "private but consent off"}])
    before = a.hits.get("/robots.txt", 0)
    cfg = base_config(download={"consent": {"robots": False, "tdmrep": False},
                                "polite": None})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=pool)
    assert m["stages"]["download"]["kept"] == 1
    assert a.hits.get("/robots.txt", 0) == before


def test_unreachable_robots_is_asked_again_on_retry_failed(tmp_path, ray_session):
    """A host whose robots.txt answered 503 is disallow-all for that run; a plain rerun
    keeps the (recent) verdict without asking, ``--retry-failed`` asks again and fetches."""
    with LoopbackServer({"/a.jpg": Route(JPG, "image/jpeg"), "/robots.txt": Route(
            b"User-agent: *\nAllow: /\n", "text/plain", first=[Route(status=503)])}) as srv:
        pool = write_pool(tmp_path / "pool.parquet", [{"url": srv.url("/a.jpg"),
                                                       "caption": "host down once"}])
        cfg = base_config(download={"consent": {"tdmrep": False}})
        out = str(tmp_path / "run")
        m = run_pipeline(cfg, out, pool=pool)
        assert m["stages"]["download"]["dropped"] == {"robots_disallowed": 1}
        m = run_pipeline(cfg, out, pool=pool)
        assert srv.hits["/robots.txt"] == 1 and srv.hits.get("/a.jpg", 0) == 0
        m = run_pipeline(cfg, out, pool=pool, options={"download": {"retry_failed": True}})
        assert srv.hits["/robots.txt"] == 2 and srv.hits["/a.jpg"] == 1
        assert m["stages"]["download"]["kept"] == 1


def test_denylist_url_pattern_rules_and_bad_pattern(tmp_path):
    from curate.algorithms.denylist import match
    from curate.core.rundir import RunDir
    from curate.errors import ConfigError
    from curate.stages._download_consent import DenylistConfig, write_denylist

    rules = pa.table({"kind": ["url_pattern", "domain"], "value": [r"/ads?/", "bad.test"]})
    urls = pa.array(["http://a.test/ad/1.jpg", "http://cdn.bad.test/x", "http://a.test/x",
                     None])
    assert match(rules, pa.array(["1", "2", "3", "4"]), urls).to_pylist() == [
        "url_pattern:/ads?/", "domain:bad.test", None, None]
    rd = RunDir(str(tmp_path / "run"))
    bad = tmp_path / "p.txt"
    bad.write_text("(unclosed\n")
    with pytest.raises(ConfigError, match="url_patterns"):
        write_denylist(rd, DenylistConfig(url_patterns=str(bad)))
    assert write_denylist(rd, None) == {"denylist_rules": 0}


def test_shard_verdicts_keep_records_per_stamp(tmp_path):
    """A worker reads an origin's record once per consent step (its stamp): a second shard
    under the same stamp decides from what it kept; a new stamp (the step ran again) reads
    the records afresh."""
    from curate.core.rundir import RunDir
    from curate.stages import _download_consent as consent
    from curate.stages.download import DownloadConfig

    rd, cfg = RunDir(str(tmp_path)), DownloadConfig(allow_private_addresses=True)
    org = "http://127.0.0.1:9"
    path = consent.record_path(rd, "images", org)

    def record(body: str) -> None:
        rd.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        rec = {"origin": org, "fetched_at": 1e12,
               "robots": {"state": "ok", "status": 200, "error": None, "html": False,
                          "body": body}}
        with open(path, "w") as f:
            json.dump(rec, f)

    def codes(stamp) -> list:
        urls = [f"{org}/a/1.jpg", f"{org}/b/2.jpg"]
        got, _ = consent.pre_fetch(rd, "images", cfg, ["u1", "u2"], urls, [0, 1], [0, 1],
                                   stamp)
        return [got.get(i, (None,))[0] for i in range(2)]

    record("User-agent: *\nDisallow: /a/\n")
    assert codes(1) == ["robots_disallowed", None]
    record("User-agent: *\nDisallow: /b/\n")             # rewritten by a later consent step
    assert codes(1) == ["robots_disallowed", None]       # same stamp: kept, not re-read
    assert codes(2) == [None, "robots_disallowed"]       # new stamp: read again
    assert codes(None) == [None, "robots_disallowed"]    # no stamp: always read
