"""Pipeline configuration: the pipeline-wide sections and the YAML/override plumbing.

Every section model has ``extra="forbid"``, so a typo is an error that names the key instead
of a silently ignored setting. Stage sections are declared by their stage modules (each
kind's ``Config``) and validated by the registry; ``--set a.b=v`` overrides are applied to
the raw data before validation, so overrides get the same checks as the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from curate.errors import ConfigError

STAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


#: marks a field that changes how a stage runs, not what it outputs (``Field(...,
#: json_schema_extra=OPERATIONAL)``): it is left out of the stage's fingerprint, so changing
#: it (more download threads) does not discard finished outputs
OPERATIONAL = {"operational": True}


def identity(section: BaseModel) -> dict[str, Any]:
    """A section as its fingerprint sees it: every field but the operational ones."""
    data = section.model_dump(mode="json", by_alias=True)
    for name, info in type(section).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("operational"):
            data.pop(info.alias or name, None)
    return data


class Section(BaseModel):
    """Base of every config section: unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_Section = Section


class PoolConfig(_Section):
    """How to read the input pool and cut it into shards."""

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="canonical name -> pool column, e.g. {url: URL, caption: TEXT}; "
                    "lang: a language code per pair, used by the language stage as is",
    )
    shard_size: int = Field(10_000, ge=1, le=10_000_000)
    drop_duplicates: bool = True
    on_bad_row: Literal["error", "drop"] = "error"
    max_caption_bytes: int = Field(
        65_536, ge=1, description="captions longer than this (UTF-8 bytes) are a bad row"
    )
    sample_fraction: float | None = Field(
        None, gt=0, le=1, description="a pilot run (curate pilot): ingest only the pairs whose "
        "seeded uid hash falls below this fraction; unset for a full run")
    sample_seed: int = Field(0, ge=0, description="seed of the pilot's uid hash")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """Leave the sample keys out of a full run's dump, so its pool fingerprint (and so
        every stage fingerprint) is what it was before pilots existed."""
        data = handler(self)
        if self.sample_fraction is None:
            data.pop("sample_fraction", None)
            data.pop("sample_seed", None)
        return data

    @model_validator(mode="after")
    def _known_columns(self) -> PoolConfig:
        known = {"uid", "url", "caption", "image", "image_emb", "text_emb", "lang"}
        for key in self.columns:
            if key not in known:
                raise ValueError(
                    f"pool.columns: unknown canonical column '{key}' (valid: {sorted(known)})"
                )
        return self


class RunConfig(_Section):
    """How the engine runs shards: retries, time limits, failure budget."""

    max_retries: int = Field(2, ge=0, le=100)
    shard_timeout_s: float | None = Field(3600, gt=0)
    max_failed_fraction: float = Field(0.0, ge=0, le=1)
    num_cpus: int | None = Field(None, ge=1, description="local Ray only")


class PipelineConfig(BaseModel):
    """The pipeline-wide part of a pipeline YAML: the stage list, ``pool`` and ``run``.

    Every other top-level key is a stage section, kept raw here and validated by the stage
    registry (:mod:`curate.stages.registry`) against the ``Config`` model its stage kind
    declares; this module sits below the stages and does not know them.
    """

    model_config = ConfigDict(extra="allow")

    stages: list[str] = Field(default_factory=lambda: ["download"])
    pool: PoolConfig = Field(default_factory=PoolConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _stage_list(self) -> PipelineConfig:
        if not self.stages:
            raise ValueError("stages: the pipeline lists no stage")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages: a stage is listed twice: {self.stages}")
        for name in self.stages:
            if not STAGE_NAME.fullmatch(name):
                raise ValueError(f"stages: {name!r} is not a valid stage name (letters, "
                                 "digits and _; it names a folder, a section and a SQL view)")
        return self

    def sections(self) -> dict[str, Any]:
        """The raw stage sections (everything but stages, pool and run)."""
        return dict(self.model_extra or {})


def fingerprint(payload: Any) -> str:
    """A short stable digest of a JSON-able payload (config sections, upstream digests)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def _format_error(err: ValidationError, source: str, section: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join([section] * bool(section) + [str(p) for p in first["loc"]]) or "(top level)"
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


def validate(model: type[BaseModel], data: Any, source: str, section: str = "") -> Any:
    """``model.model_validate(data)`` with a pydantic error turned into one ConfigError line
    naming the key (``section.key``)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source, section)) from None


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


def read_config_data(path: str | Path | None, overrides: list[str] | None = None
                     ) -> dict[str, Any]:
    """A pipeline YAML as data (``{}`` when ``path`` is None) with ``--set`` overrides applied;
    :func:`curate.stages.registry.load_pipeline` validates it."""
    data = read_yaml(path) if path is not None else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    return data
