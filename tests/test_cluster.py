"""Cluster mode: the same pipeline on a real 2-node local Ray cluster through RAY_ADDRESS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import base_config, pool_rows, write_pool
from helpers import read_parts

from curate.driver import run_pipeline

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    os.environ["RAY_ADDRESS"] = cluster.address
    import ray
    from curate.stages.registry import parse_pipeline as parse_config
    from curate.driver import run_pipeline

    cfg = parse_config(json.loads(sys.argv[1]))
    run_pipeline(cfg, sys.argv[2], pool=sys.argv[3])
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print("NODES", len(nodes))
    ray.shutdown()
    cluster.shutdown()
""")


def test_two_node_cluster_matches_embedded(tmp_path, image_server, ray_session):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("picture\nthing\nnumber\n")
    rows = pool_rows(image_server)
    pool = write_pool(tmp_path / "pool.parquet", rows)
    cfg = base_config(stages=["download", "match", "balance", "emit"],
                      match={"metadata": str(vocab)}, balance={"t": 4, "seed": 2},
                      emit={"rows_per_shard": 5})
    embedded = tmp_path / "embedded"
    run_pipeline(cfg, str(embedded), pool=pool)

    clustered = tmp_path / "cluster"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    os.makedirs("/tmp/ray", exist_ok=True)  # ray.cluster_utils records its address there
    r = subprocess.run([sys.executable, "-c", SCRIPT, cfg.model_dump_json(by_alias=True),
                        str(clustered), pool], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "NODES 2" in r.stdout
    for folder in ("pool", "images", "match", "balance", "curated"):
        a, b = read_parts(embedded / folder), read_parts(clustered / folder)
        assert a.equals(b), folder
