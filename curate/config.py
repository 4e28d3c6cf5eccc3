"""Pipeline configuration: pydantic models of the YAML a user writes.

One model per stage section, all with ``extra="forbid"`` so a typo is an error that names the
key instead of a silently ignored setting. ``load_config`` applies ``--set a.b=v`` overrides
before validation, so overrides get the same checks as the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curate.errors import ConfigError

STAGE_ORDER = ("download", "score", "match", "balance", "prune", "emit", "report")
StageName = Literal["download", "score", "match", "balance", "prune", "emit", "report"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PoolConfig(_Section):
    """How to read the input pool and cut it into shards."""

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="canonical name -> pool column, e.g. {url: URL, caption: TEXT}",
    )
    shard_size: int = Field(10_000, ge=1, le=10_000_000)
    drop_duplicates: bool = True
    on_bad_row: Literal["error", "drop"] = "error"
    max_caption_bytes: int = Field(
        65_536, ge=1, description="captions longer than this (UTF-8 bytes) are a bad row"
    )

    @model_validator(mode="after")
    def _known_columns(self) -> PoolConfig:
        known = {"uid", "url", "caption", "image", "image_emb", "text_emb"}
        for key in self.columns:
            if key not in known:
                raise ValueError(
                    f"pool.columns: unknown canonical column '{key}' (valid: {sorted(known)})"
                )
        return self


class ResizeConfig(_Section):
    image_size: int = Field(256, ge=8)
    resize_mode: Literal["keep_ratio", "center_crop", "border", "keep_ratio_largest"] = (
        "keep_ratio"
    )
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)


class DownloadConfig(_Section):
    """img2dataset settings; the limits guard workers against hostile servers."""

    threads: int = Field(32, ge=1, le=1024, description="fetch threads per shard task")
    processes: int | None = Field(
        None, ge=1, description="shard tasks at once (default: one per CPU of the Ray cluster)"
    )
    timeout: float = Field(10, gt=0, le=600)
    retries: int = Field(0, ge=0, le=10)
    max_image_bytes: int = Field(20_000_000, ge=1)
    max_image_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb limit")
    allow_private_addresses: bool = False
    user_agent_token: str | None = None
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    resize: ResizeConfig | None = None


class BasicFilterConfig(_Section):
    """DataComp's basic filtering, applied before the model runs."""

    min_caption_words: int = Field(0, ge=0)
    min_caption_chars: int = Field(0, ge=0)
    min_image_side: int = Field(0, ge=0)
    max_aspect_ratio: float | None = Field(None, ge=1)


class ScoreFilterConfig(_Section):
    min_score: float | None = Field(None, ge=-1, le=1)
    top_fraction: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_of(self) -> ScoreFilterConfig:
        if self.min_score is not None and self.top_fraction is not None:
            raise ValueError("score.filter: set min_score or top_fraction, not both")
        return self


class ScoreConfig(_Section):
    model: str | None = Field(None, description="default ViT-B-32, or the model_config's name")
    pretrained: str = "datacomp_xl_s13b_b90k"
    model_config_path: str | None = Field(None, alias="model_config")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(256, ge=1, le=65_536)
    num_actors: int | None = Field(None, ge=1)
    basic: BasicFilterConfig = Field(default_factory=BasicFilterConfig)
    filter: ScoreFilterConfig = Field(default_factory=ScoreFilterConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())


class MatchConfig(_Section):
    metadata: str = "default"
    boundary: Literal["metaclip1", "metaclip2"] = "metaclip1"


class BalanceConfig(_Section):
    t: int = Field(20_000, gt=0)
    seed: int = Field(0, ge=0)


class PruneConfig(_Section):
    k: int = Field(1000, ge=1)
    niter: int = Field(20, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    sample_size: int | None = Field(None, ge=1)
    max_points_per_centroid: int = Field(256, ge=1)
    dedup_eps: float | None = Field(None, gt=0, lt=1)
    dbp: bool = False
    tau: float = Field(0.5, gt=0)
    n_neighbors: int = Field(20, ge=1)
    target_fraction: float | None = Field(None, gt=0, le=1)
    target_size: int | None = Field(None, ge=1)
    keep: Literal["hard", "easy", "random"] = "hard"
    min_per_cluster: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _target(self) -> PruneConfig:
        if self.target_fraction is not None and self.target_size is not None:
            raise ValueError("prune: set target_fraction or target_size, not both")
        if self.dbp and self.target_fraction is None and self.target_size is None:
            raise ValueError("prune.dbp: needs prune.target_fraction or prune.target_size")
        return self


class EmitConfig(_Section):
    rows_per_shard: int = Field(10_000, ge=1)
    webdataset: bool = False
    include_embeddings: bool = False


class ReportConfig(_Section):
    top_n: int = Field(30, ge=1)


class RunConfig(_Section):
    """How the engine runs shards: retries, time limits, failure budget."""

    max_retries: int = Field(2, ge=0, le=100)
    shard_timeout_s: float | None = Field(3600, gt=0)
    max_failed_fraction: float = Field(0.0, ge=0, le=1)
    num_cpus: int | None = Field(None, ge=1, description="local Ray only")


class PipelineConfig(_Section):
    """A whole pipeline: which stages run, in what order, and each stage's settings."""

    stages: list[StageName] = Field(default_factory=lambda: ["download"])
    pool: PoolConfig = Field(default_factory=PoolConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    match: MatchConfig = Field(default_factory=MatchConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    emit: EmitConfig = Field(default_factory=EmitConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _stage_list(self) -> PipelineConfig:
        if not self.stages:
            raise ValueError("stages: the pipeline lists no stage")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages: a stage is listed twice: {self.stages}")
        if "balance" in self.stages and "match" not in self.stages:
            raise ValueError("stages: balance needs match before it")
        if "balance" in self.stages and self.stages.index("balance") < self.stages.index("match"):
            raise ValueError("stages: match must come before balance")
        return self

    def section(self, stage: str) -> dict[str, Any]:
        """The config a stage's fingerprint depends on (JSON-ready)."""
        return getattr(self, stage).model_dump(mode="json", by_alias=True)

    def fingerprint(self, stage: str, upstream: str = "") -> str:
        payload = json.dumps({"stage": stage, "cfg": self.section(stage), "up": upstream},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict | list):
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. balance.t=20000")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {assignment!r}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_config(data: Any, source: str = "config") -> PipelineConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: pipeline config not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{p}:{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: pipeline config is not UTF-8 text") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML (or the defaults when ``path`` is None) and apply overrides."""
    data = read_yaml(path) if path is not None else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    return parse_config(data, str(path) if path is not None else "config")
