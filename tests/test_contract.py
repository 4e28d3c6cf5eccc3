"""The stage contract apart from its runtime: what a stage declares is checked where it runs.

- A deciding stage writes only the reason codes its kind declares (``run_shard`` and a cut's
  rewrite refuse any other, and a drop without a code): codes are stable API.
- A stage gets an already parsed pipeline; workers parse each recorded config once.
- ``cfg.<kind>`` with two instances of that kind is an error naming them.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import base_config
from helpers import write_columns

from curate.errors import ConfigError
from curate.stages import runtime
from curate.stages.base import Stage, StageSpec, decisions


class Sloppy(Stage):
    """A plugin that writes a code it never declared (kind: tests...:Sloppy)."""

    kind = "sloppy"
    folder = "sloppy"
    decides = True
    reasons = {"too_odd": "an odd row number"}
    schema = pa.schema([("uid", pa.string()), ("kept", pa.bool_()),
                        ("reason", pa.string()), ("detail", pa.string())])

    def process(self, shard, inputs):
        n = inputs.num_rows
        kept = [i % 2 == 0 for i in range(n)]
        return pa.table({"uid": inputs["uid"], **decisions(kept, ["too_odd"] * n)})


def _stage(tmp_path):
    from curate.stages.registry import parse_pipeline

    cfg = parse_pipeline({"stages": ["sloppy"], "sloppy": {"kind": f"{__file__}:Sloppy"}})
    spec = StageSpec("sloppy", str(tmp_path / "run"), cfg.dump(), "fp")
    return runtime.build(spec, None, cfg)


def test_an_undeclared_reason_code_is_refused_where_it_is_written(tmp_path):
    stage = _stage(tmp_path)
    t = pa.table({"uid": ["a", "b", "c"]})
    good = stage.process("part-00000.parquet", t)
    runtime.check_reasons(stage, good)  # declared: fine
    bad = pa.table({"uid": t["uid"], **decisions([True, False, False], ["x", "too_odd", "typo"])})
    with pytest.raises(ValueError, match=r"sloppy: wrote 'typo', not among the reason codes "
                                         r"its kind declares \(too_odd\)"):
        runtime.check_reasons(stage, bad)
    null = pa.table({"uid": t["uid"], "kept": [True, False, True],
                     "reason": pa.array([None, None, None], pa.string()),
                     "detail": pa.array([None] * 3, pa.string())})
    with pytest.raises(ValueError, match="a null reason"):
        runtime.check_reasons(stage, null)


def test_run_shard_fails_the_shard_on_an_undeclared_code(tmp_path, monkeypatch):
    from curate.config import PoolConfig
    from curate.core.rundir import RunDir
    from curate.stages.ingest import ingest

    rd = RunDir(str(tmp_path / "run"))
    ingest(rd, write_columns(tmp_path / "p.parquet", n=4), PoolConfig(shard_size=4), {})
    stage = _stage(tmp_path)
    monkeypatch.setattr(Sloppy, "reasons", {"other": "not what it writes"})
    runtime._STAGES.clear()
    with pytest.raises(ValueError, match="'too_odd', not among"):
        runtime.run_shard(stage.spec, Sloppy, rd.pool_shards()[0])
    assert not (tmp_path / "run" / "sloppy").exists()  # nothing written


def test_workers_parse_each_config_once_and_keep_a_few_stages(tmp_path):
    stage = _stage(tmp_path)
    runtime._PIPELINES.clear()
    a = runtime.pipeline_of(stage.spec.config)
    assert runtime.pipeline_of(dict(stage.spec.config)) is a  # same config: same object
    runtime._STAGES.clear()
    first = runtime.get_stage(stage.spec, setup=False)
    assert runtime.get_stage(stage.spec, setup=False) is first
    for i in range(runtime._KEEP + 2):  # least recently used goes, not the whole cache
        runtime.get_stage(StageSpec("sloppy", stage.spec.run_url, stage.spec.config,
                                    f"fp{i}"), setup=False)
        runtime.get_stage(stage.spec, setup=False)  # keep using the first
    assert runtime.get_stage(stage.spec, setup=False) is first
    assert len(runtime._STAGES) == runtime._KEEP


def test_cfg_kind_with_two_instances_names_them():
    cfg = base_config(stages=["aes_a", "aes_b"], aes_a={"kind": "aesthetic"},
                      aes_b={"kind": "aesthetic", "model": "vit_b_32"})
    with pytest.raises(ConfigError, match=r"2 aesthetic stages \(aes_a, aes_b\): name "
                                          r"the instance"):
        cfg.aesthetic  # noqa: B018 - the attribute read is the test
    assert cfg.aes_b.model == "vit_b_32" and cfg.section("aes_a").model == "vit_l_14"
