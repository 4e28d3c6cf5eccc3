"""Cluster-wide caps (issue 14: the per-host cap across all download workers): the slot
table's rules, one process's leases, and the download stage on a loopback host with two
download tasks at once."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest
from conftest import base_config, drawn_image, write_pool

from curate.core import slots
from curate.core.slots import Leases, SlotTable
from curate.driver import run_pipeline
from curate.media.loopback import LoopbackServer, Route


def test_slot_table_caps_each_key_and_frees_what_is_given_back():
    t = SlotTable(capacity=2, lease_s=10)
    assert t.sync("a", {"h": 1}, {}, 0) == ({"h": 1}, [])
    assert t.sync("b", {"h": 3}, {}, 0) == ({"h": 1}, [])   # h is at its cap: 1 of 3
    # a holds h and b waits for it: h is contended for a, not for b
    assert t.sync("a", {"other": 1}, {}, 0) == ({"other": 1}, ["h"])
    assert t.sync("b", {"h": 2}, {}, 0)[0] == {}            # still full
    assert t.sync("a", {}, {"h": 5}, 0) == ({}, [])         # gives back only what it has
    assert t.sync("b", {"h": 1}, {}, 0) == ({"h": 1}, [])
    assert t.used == {"h": 2, "other": 1}
    assert t.stats() == {"capacity": 2, "peak_per_key": 2, "cap_hits": 2, "waits": 4, "calls": 6}


def test_slot_table_expires_a_silent_holder_only():
    t = SlotTable(capacity=1, lease_s=10)
    t.sync("dead", {"h": 1}, {}, 0)
    t.sync("alive", {"g": 1}, {}, 0)
    t.sync("alive", {}, {}, 8)                              # a call renews the lease
    assert t.sync("x", {"h": 1}, {}, 9)[0] == {}            # within dead's lease
    assert t.sync("x", {"h": 1}, {}, 10.5)[0] == {"h": 1}   # dead's lease ran out
    assert t.used == {"h": 1, "g": 1}                       # alive kept g
    assert sorted(t.expire(30)) == ["g", "h"] and t.used == {} and t.wanting == {}


class _Shared:
    """A SlotTable behind a lock, as the gate actor serves it (one call at a time)."""

    def __init__(self, capacity: int):
        self.table, self.lock = SlotTable(capacity, 60), threading.Lock()

    def client(self, holder: str, linger_s: float = 0.05) -> Leases:
        def sync(want: dict, give: dict):
            with self.lock:
                return self.table.sync(holder, want, give, time.monotonic())

        return Leases(sync, linger_s=linger_s, poll_s=0.002)


def test_leases_of_two_processes_never_exceed_the_shared_cap():
    shared = _Shared(capacity=3)
    in_use, peak, lock = [0], [0], threading.Lock()

    def request(args) -> None:
        leases, key, last = args
        assert leases.acquire(key, time.monotonic() + 30)
        with lock:
            in_use[0] += key == "h"
            peak[0] = max(peak[0], in_use[0])
        time.sleep(0.003)
        with lock:
            in_use[0] -= key == "h"
        leases.release(key, keep=not last)

    a, b = shared.client("a"), shared.client("b")
    work = [(x, k, i >= 190) for i in range(200) for x in (a, b) for k in ("h", "g")]
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(request, work))
    a.close()
    b.close()
    assert peak[0] == 3                            # the cap, reached and never passed
    assert shared.table.used == {}                 # closing gave every slot back


def test_leases_keep_a_slot_between_requests_only_while_asked_to():
    shared = _Shared(capacity=2)
    a = shared.client("a", linger_s=30)
    for _ in range(50):                            # more URLs of h to come: keep it
        assert a.acquire("h")
        a.release("h", keep=True)
    assert shared.table.used == {"h": 1}
    calls = a.remote_calls
    assert calls <= 3
    assert a.acquire("h")
    a.release("h", keep=False)                     # the last URL of h: back at the next call
    _until(lambda: shared.table.used == {})
    assert a.acquire("g")
    a.release("g")
    a.close()                                      # kept slots go back on close
    assert shared.table.used == {}


def test_a_kept_slot_goes_to_another_holder_that_waits():
    shared = _Shared(capacity=1)
    a, b = shared.client("a", linger_s=60), shared.client("b", linger_s=60)
    assert a.acquire("h")
    a.release("h", keep=True)                      # a would keep it for a minute ...
    assert b.acquire("h", time.monotonic() + 10)   # ... but b waits: contended, handed on
    b.release("h", keep=False)
    for x in (a, b):
        x.close()


def test_leases_give_up_at_the_deadline_and_open_when_the_table_is_lost():
    shared = _Shared(capacity=1)
    a, b = shared.client("a"), shared.client("b")
    assert a.acquire("h")
    assert not b.acquire("h", deadline=time.monotonic() + 0.1)  # a holds the only slot

    def broken(want, give):
        raise ConnectionError("actor died")

    lost = []
    c = Leases(broken, on_error=lost.append)
    assert c.acquire("h") and c.acquire("h") and c.open  # local caps only from now on
    assert len(lost) == 1
    for x in (a, b, c):
        x.close()


def test_a_client_outlives_its_table_and_its_kept_slots_void_with_a_new_one():
    """Workers keep one client across stage runs: when the table closes it grants
    everything (nothing to cap against), and a reopened table's generation voids the slots
    it kept from the old one (which the new table never granted)."""
    from curate.core.slots import GateActor

    gates, lock = GateActor(), threading.Lock()

    def sync(want, give):
        with lock:
            return gates.sync("g", "w1", want, give)

    gates.open("g", 1, 60)
    c = Leases(sync, linger_s=60, poll_s=0.002, check_s=0.01)
    assert c.acquire("h")
    c.release("h", keep=True)                      # kept
    assert gates.close("g")["peak_per_key"] == 1
    _until(lambda: c._closed)
    assert c.acquire("h") and c.acquire("h")       # closed: no cap to keep
    gates.open("g", 1, 60)                          # the next run's table: a client that
    assert c.acquire("h", time.monotonic() + 5)    # saw it closed asks before granting
    assert gates.tables["g"][0].used == {"h": 1}
    c.release("h", keep=False)
    _until(lambda: gates.tables["g"][0].used == {})
    assert c._idle == {}                           # the old kept slot is void
    assert c.acquire("h", time.monotonic() + 5)    # granted by the new table ...
    assert gates.tables["g"][0].used == {"h": 1}   # ... which counts it
    c.release("h", keep=False)
    c.close()
    assert gates.tables["g"][0].used == {}


def _until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


@pytest.mark.parametrize("per_host,split,reserved,shared", [
    (2, True, 1, 0),    # two tasks divide the cap: each holds one slot, no gate at all
    (1, True, 0, 1),    # fewer slots than tasks: every request goes through the gate
    (3, True, 1, 1),    # one slot each, the third shared through the gate
    (2, False, 0, 2),   # split_cap false: the whole cap through the gate
])
def test_download_per_host_cap_holds_across_two_tasks(tmp_path, ray_session, per_host, split,
                                                       reserved, shared):
    """Two download tasks (two shards, processes=2) on one host: the server never sees more
    than per_host requests at once, every pair is fetched, and the cap is split as
    slots.split says (the gate's own statistics show it lent its shared slot). Each answer
    takes 0.05 s: 16 threads that ignored the cap would overlap many times over, and at
    per_host 1 the 24 requests still take only about a second one after another."""
    routes = {f"/{i}.jpg": Route(drawn_image(i, (32, 24), "jpg"), "image/jpeg", delay_s=0.05)
              for i in range(24)}
    with LoopbackServer(routes) as srv:
        pool = write_pool(tmp_path / "pool.parquet",
                          [{"url": srv.url(f"/{i}.jpg"), "caption": f"c {i}"} for i in range(24)])
        cfg = base_config(pool={"shard_size": 12},
                          download={"processes": 2, "consent": {"robots": False,
                                                                "tdmrep": False},
                                    "polite": {"per_host": per_host, "split_cap": split}})
        out = tmp_path / "run"
        m = run_pipeline(cfg, str(out), pool=pool)
        assert srv.peak <= per_host, srv.peak
    st = m["stages"]["download"]
    assert st["kept"] == 24
    gate = st["gates"]["hosts"]
    assert (gate["tasks_at_once"], gate["reserved_per_task"], gate["shared"]) == (
        2, reserved, shared)
    if shared:
        assert gate["peak_per_key"] == shared and gate["calls"] >= 1
    else:
        assert "calls" not in gate  # no gate opened: nothing was asked of one
    assert json.loads((out / "run.json").read_text())["stages"]["download"]["gates"] == {
        "hosts": gate}
    assert pq.read_table(out / "images", columns=["kept"])["kept"].to_pylist() == [True] * 24


def test_split_never_exceeds_the_cap():
    """Written from the rule, not the function: holders x reserved + shared == capacity,
    reserved as large as it can be."""
    for cap in range(1, 20):
        for k in range(1, 30):
            r, s = slots.split(cap, k)
            assert k * r + s == cap and 0 <= s < k and r == max(
                x for x in range(cap + 1) if k * x <= cap)
    with pytest.raises(ValueError):
        slots.split(0, 2)
