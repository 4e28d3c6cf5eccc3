"""Crash safety: kill the driver at every stage and global step, rerun, compare.

Each kill is a real SIGKILL of the `curate run` process (from the driver itself or from a
Ray worker, via the CURATE_FAULT hook). The same directory is resumed after every kill; the
final kept set and curated shards must equal an uninterrupted run's, and no shard that had
finished may be processed again (CURATE_TRACE records every shard written).

Each kill needs a process of its own (the first kill point reached ends it), so the cost is
per process: the 23 `curate run` processes (22 kills, the final resume) join one Ray started
for the test (``RAY_ADDRESS``, how curate runs on a cluster) instead of each starting one (a
Ray start is several CPU-seconds). Only the first killed process starts an embedded Ray, so
a driver that dies with the Ray it started is covered too. That Ray is the test's own, not
the session's, so that its workers see CURATE_TRACE (a worker's environment is its raylet's).
The uninterrupted reference run is in this process, on the session's Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

import pytest
from conftest import pool_rows, write_pool
from helpers import TINY, curated
from typer.testing import CliRunner

from curate.cli import app

KILLS = [
    "ingest:part-00001.parquet:kill-driver:after",  # a read task, mid-ingest
    "download:1:kill-driver",
    "score:2:kill-driver",
    "match:0:kill-driver",
    "balance.count:1:kill-driver",            # a global step's map
    "balance.count:commit:kill",              # ... and its commit, on the driver
    "balance:2:kill-driver",
    "prune.count:0:kill-driver",
    "prune.sample:1:kill-driver",             # the k-means sample, written per shard
    "prune.train:0:kill-driver",              # the k-means task (GPU when there is one)
    "prune.train:commit:kill",                # the driver, right after k-means
    "prune.assign:1:kill-driver",
    "prune.dedup:0:kill-driver",
    "prune.dbp_train:commit:kill",            # DBP's re-clustering of the survivors
    "prune.dbp_assign:1:kill-driver",
    "prune.clusters:commit:kill",
    "prune.select:1:kill-driver",
    "prune:0:kill-driver",
    "prune.cleanup:commit:kill",
    "emit.count:0:kill-driver",
    "emit.write:part-00000.parquet:kill-driver",
    "emit.write:commit:kill",
]


def _setup(tmp_path, server):
    (tmp_path / "tiny-fault.json").write_text(json.dumps(TINY))
    (tmp_path / "vocab.txt").write_text("picture\nthing\nnumber\nblue\nsmall\n")
    rows = [r for r in pool_rows(server) if "/ok/" in r["url"]]
    words = ["a picture of a thing", "a small blue thing", "number one picture", "blue"]
    rows = [dict(r, caption=f"{words[i % 4]} {i}") for i, r in enumerate(rows)]
    pool = write_pool(tmp_path / "pool.parquet", rows)
    yaml = tmp_path / "p.yaml"
    yaml.write_text(f"""
stages: [download, score, match, balance, prune, emit]
pool: {{shard_size: 6}}
download: {{threads: 4, timeout: 5, allow_private_addresses: true, consent: {{timeout: 60}}}}
score: {{model_config: {tmp_path / 'tiny-fault.json'}, pretrained: none, batch_size: 8}}
match: {{metadata: {tmp_path / 'vocab.txt'}}}
balance: {{t: 3, seed: 0}}
prune: {{k: 2, niter: 5, dedup_eps: 0.000001, dbp: true, target_fraction: 0.7}}
emit: {{rows_per_shard: 4, webdataset: true}}
run: {{max_retries: 0, num_cpus: 2}}
""")
    return pool, str(yaml)


def _curate(out, pool, yaml, fault=None, trace=None, address=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CURATE_FAULT", "CURATE_TRACE", "RAY_ADDRESS")}
    if fault:
        env["CURATE_FAULT"] = fault
    if trace:
        env["CURATE_TRACE"] = str(trace)
    if address:
        env["RAY_ADDRESS"] = address
    # an embedded Ray's socket paths must stay under 107 bytes: a short temp dir, not tmp_path
    with tempfile.TemporaryDirectory(prefix="crf-", dir="/tmp",
                                     ignore_cleanup_errors=True) as ray_tmp:
        env["CURATE_RAY_TMP"] = ray_tmp
        return subprocess.run([sys.executable, "-m", "curate.cli", "run", "--pool", pool,
                               "--pipeline", yaml, "--out", str(out)], env=env,
                              capture_output=True, text=True, timeout=300)


HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[1], log_to_driver=False,
         configure_logging=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


@pytest.fixture
def ray_head(tmp_path):
    """A local Ray for the killed runs to join; its workers inherit CURATE_TRACE. Returns
    (address, trace file). Closing its stdin ends it (Ray's processes share its fate)."""
    trace = tmp_path / "trace.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("CURATE_FAULT", "RAY_ADDRESS")}
    env["CURATE_TRACE"] = str(trace)
    with tempfile.TemporaryDirectory(prefix="crh-", dir="/tmp",
                                     ignore_cleanup_errors=True) as ray_tmp:
        proc = subprocess.Popen([sys.executable, "-c", HEAD, ray_tmp], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            address = proc.stdout.readline().strip()
            assert address, "the test's Ray did not start"
            yield address, trace
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _result(out):
    cur = curated(out)
    tars = {p.name: p.read_bytes() for p in (out / "curated" / "wds").glob("*.tar")}
    return cur, tars


def test_kill_anywhere_then_resume_equals_uninterrupted(tmp_path, image_server, ray_session,
                                                        ray_head):
    pool, yaml = _setup(tmp_path, image_server)
    clean = tmp_path / "clean"  # uninterrupted, in this process (the session's Ray)
    r = CliRunner().invoke(app, ["run", "--pool", pool, "--pipeline", yaml, "--out",
                                 str(clean)])
    assert r.exit_code == 0, r.output[-2000:]

    out = tmp_path / "killed"
    address, trace = ray_head
    for i, fault in enumerate(KILLS):
        # the first kill takes down the embedded Ray its process started; the rest join
        r = _curate(out, pool, yaml, fault=fault, trace=trace, address=address if i else None)
        assert r.returncode == -9, (fault, r.returncode, r.stderr[-2000:])
    r = _curate(out, pool, yaml, trace=trace, address=address)
    assert r.returncode == 0, r.stderr[-2000:]

    a, a_tars = _result(clean)
    b, b_tars = _result(out)
    assert a.num_rows > 0
    assert a.equals(b)  # same pairs, same columns, same order, same image bytes
    assert a_tars == b_tars
    # no duplicated and no lost pairs
    assert len(set(b["uid"].to_pylist())) == b.num_rows
    # a shard that had finished is never processed again
    counts = Counter(trace.read_text().split("\n"))
    # (ingest redoes the one file it was in the middle of, by design: see ingest.py)
    per_shard = {k: v for k, v in counts.items()
                 if k and not k.startswith(("emit", "ingest"))}
    assert max(per_shard.values()) == 1, [k for k, v in per_shard.items() if v > 1]
