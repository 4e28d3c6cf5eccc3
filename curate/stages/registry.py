"""The stage registry: which stage kinds exist, and a pipeline's stages resolved against them.

Built-in kinds are found, not listed: every module of ``curate.stages`` that defines a
:class:`~curate.stages.base.Stage` subclass with a ``kind`` contributes it, so adding a stage
is adding one module. A pipeline may also name a stage class of its own as
``kind: package.module:Class`` or ``kind: path/to/file.py:Class`` (a file's module is
pickled by value, so Ray workers need not be able to import it).

A pipeline's ``stages`` list holds instance names. An instance's section is the top-level key
of that name; its kind is the section's ``kind`` or, when absent, the name itself — so
today's files (``stages: [download, score]`` + ``score: {...}``) mean what they always meant,
and one pipeline may hold two instances of one kind (``score_b32: {kind: score, ...}``).
Everything else — stage order checks, run-directory folders, SQL views, CLI commands,
status rows, report sections, emit's joins — is derived from here.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from curate.config import (
    PipelineConfig,
    PoolConfig,
    RunConfig,
    fingerprint,
    identity,
    read_config_data,
    validate,
)
from curate.errors import ConfigError, RunDirError
from curate.stages.base import Stage, StageRef

#: modules of curate.stages that are machinery, not stage kinds
_NOT_KINDS = {"base", "registry", "runtime", "ingest", "cut", "preflight"}


@lru_cache(maxsize=1)
def builtin_kinds() -> dict[str, type[Stage]]:
    """kind -> class for every stage module shipped in ``curate.stages``."""
    import curate.stages as pkg

    found: dict[str, type[Stage]] = {}
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name in _NOT_KINDS or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"curate.stages.{mod.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Stage) and obj is not Stage
                    and "kind" in vars(obj) and obj.__module__ == module.__name__):
                found[obj.kind] = obj
    return dict(sorted(found.items()))


#: plugin classes already resolved (in a worker: received by value with the task)
_PLUGINS: dict[str, type[Stage]] = {}


def remember(kind: str, cls: type[Stage]) -> None:
    """Record the class of a plugin kind, so a worker need not import it again."""
    if kind not in builtin_kinds():
        _PLUGINS[kind] = cls


def stage_class(kind: str) -> type[Stage]:
    """A built-in kind, or a plugin named ``module:Class`` / ``file.py:Class``."""
    kinds = builtin_kinds()
    if kind in kinds:
        return kinds[kind]
    if kind not in _PLUGINS:
        _PLUGINS[kind] = _import_plugin(kind)
    return _PLUGINS[kind]


def _import_plugin(kind: str) -> type[Stage]:
    kinds = builtin_kinds()
    if ":" not in kind:
        raise ConfigError(f"unknown stage kind {kind!r} (built-in: {', '.join(kinds)}; or "
                          "package.module:Class, or path/to/file.py:Class)")
    where, cls_name = kind.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"stage kind {kind!r}: {path} does not exist")
            mod_name = f"curate_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
            module = sys.modules.get(mod_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
                from curate.core import engine

                engine.ship_by_value(module)  # workers get the class by value
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a plugin's import error is the user's to fix
        raise ConfigError(f"stage kind {kind!r}: cannot import it ({type(err).__name__}: "
                          f"{err})") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Stage) and hasattr(cls, "kind")):
        raise ConfigError(f"stage kind {kind!r}: {cls_name} is not a Stage subclass with a kind")
    return cls


class AmbiguousStage(ConfigError):
    """``cfg.<kind>`` where the pipeline has several instances of that kind."""


@dataclass(frozen=True)
class Instance:
    ref: StageRef
    cls: type[Stage]
    section: BaseModel
    #: the kind as written in the YAML (a plugin path, or the built-in name)
    kind_spec: str


class Pipeline:
    """A validated pipeline: pool and run sections plus resolved stage instances.

    ``pipeline.<name>`` is the section model of instance or kind ``name`` (the one
    instance of that kind; with several it is an error naming them), so ``cfg.balance.t``
    reads as it always has.
    """

    def __init__(self, base: PipelineConfig, instances: dict[str, Instance],
                 spare: dict[str, Any]):
        self.base = base
        self.pool: PoolConfig = base.pool
        self.run: RunConfig = base.run
        self.stages: list[str] = list(base.stages)
        self._inst = instances
        self._spare = spare  # sections of kinds not in the stage list (kept, validated)

    # --------------------------------------------------------------- lookups
    def ref(self, name: str) -> StageRef:
        return self._inst[name].ref

    def refs(self) -> list[StageRef]:
        return [self._inst[n].ref for n in self.stages]

    def stage_class(self, name: str) -> type[Stage]:
        return self._inst[name].cls

    def section(self, name: str) -> Any:
        if name in self._inst:
            return self._inst[name].section
        if name in self._spare:
            return self._spare[name]
        named = self.instances_of(name)
        if len(named) > 1:
            raise AmbiguousStage(f"the pipeline has {len(named)} {name} stages "
                                 f"({', '.join(named)}): name the instance")
        if named:
            return self._inst[named[0]].section
        return stage_class(name).Config()

    def instances_of(self, kind: str) -> list[str]:
        return [n for n in self.stages if self._inst[n].ref.kind == kind]

    def sensitive(self) -> set[tuple[str, str]]:
        """(instance, reason code) of every drop a safety rule makes: never a picture."""
        return {(n, code) for n in self.stages
                for code in self._inst[n].cls.sensitive_with(self._inst[n].section)}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.section(name)
        except AmbiguousStage:
            raise
        except ConfigError:
            raise AttributeError(name) from None

    # --------------------------------------------------------------- identity
    def dump(self) -> dict[str, Any]:
        """JSON-ready, in pipeline order; parse_pipeline(dump()) gives the same pipeline."""
        out: dict[str, Any] = {"stages": list(self.stages),
                               "pool": self.pool.model_dump(mode="json", by_alias=True)}
        for n in self.stages:
            inst = self._inst[n]
            sec = inst.section.model_dump(mode="json", by_alias=True)
            out[n] = ({"kind": inst.kind_spec, **sec} if inst.kind_spec != n else sec)
        for n, sec in self._spare.items():
            out[n] = sec.model_dump(mode="json", by_alias=True)
        out["run"] = self.run.model_dump(mode="json", by_alias=True)
        return out

    # pydantic-style names, for callers that treat the config as a model
    def model_dump(self, **_: Any) -> dict[str, Any]:
        return self.dump()

    def model_dump_json(self, **_: Any) -> str:
        import json

        return json.dumps(self.dump())

    def pool_fingerprint(self) -> str:
        return fingerprint({"stage": "pool", "cfg": self.pool.model_dump(mode="json")})

    def fingerprints(self) -> dict[str, str]:
        """A chain: each instance's fingerprint depends on its section and everything before."""
        out: dict[str, str] = {}
        up = self.pool_fingerprint()
        for n in self.stages:
            inst = self._inst[n]
            up = fingerprint({"stage": n, "kind": inst.kind_spec, "up": up,
                              "cfg": identity(inst.section)})
            out[n] = up
        return out


def _folder(cls: type[Stage], name: str, kind_spec: str) -> str:
    return cls.folder if name == kind_spec else name


def parse_pipeline(data: Any, source: str = "config") -> Pipeline:
    """Validate pipeline data (a parsed YAML, or run.json's ``config``) into a Pipeline."""
    if isinstance(data, Pipeline):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    base = validate(PipelineConfig, data, source)
    raw = base.sections()
    instances: dict[str, Instance] = {}
    folders: dict[str, str] = {"pool": "pool"}
    for name in base.stages:
        sec = raw.get(name) or {}
        if not isinstance(sec, dict):
            raise ConfigError(f"{source}: {name}: expected a mapping, got {type(sec).__name__}")
        sec = dict(sec)
        kind_spec = str(sec.pop("kind", name))
        try:
            cls = stage_class(kind_spec)
        except ConfigError as err:
            raise ConfigError(f"{source}: stages: {name}: {err}") from None
        section = validate(cls.Config, sec, source, name)
        folder = _folder(cls, name, kind_spec)
        if folder in folders.values():
            raise ConfigError(f"{source}: stages: {name} would write into {folder}/, which "
                              "another stage already uses; rename the instance")
        folders[name] = folder
        view = (cls.view or cls.folder) if name == kind_spec else name
        instances[name] = Instance(StageRef(name, cls.kind, folder,
                                            cls.decides_with(section), view), cls,
                                   section, kind_spec)
    spare: dict[str, Any] = {}
    kinds = builtin_kinds()
    for key, sec in raw.items():
        if key in instances:
            continue
        if key not in kinds:
            raise ConfigError(f"{source}: {key}: unknown key (not a stage in `stages`, nor a "
                              f"stage kind: {', '.join(kinds)})")
        spare[key] = validate(kinds[key].Config, sec or {}, source, key)
    pipe = Pipeline(base, instances, spare)
    for name in base.stages:
        problem = _order_problem(pipe, name)
        if problem:
            raise ConfigError(f"{source}: stages: {problem}")
    return pipe


def _order_problem(pipe: Pipeline, name: str) -> str | None:
    """A stage kind may require an earlier kind (balance needs a match before it)."""
    cls = pipe.stage_class(name)
    i = pipe.stages.index(name)
    earlier = {pipe.ref(n).kind for n in pipe.stages[:i]}
    for need in cls.requires:
        if need not in earlier:
            return f"{name} needs a {need} stage before it"
    return None


def load_pipeline(path: str | Path | None, overrides: list[str] | None = None) -> Pipeline:
    """Read a pipeline YAML (or the defaults when ``path`` is None) and apply overrides."""
    return parse_pipeline(read_config_data(path, overrides),
                          str(path) if path is not None else "config")


def recorded_pipeline(run_url: str) -> Pipeline:
    """The pipeline recorded in a run directory's run.json."""
    from curate.core.rundir import RunDir

    m = RunDir(run_url).load_manifest()
    if not m:
        raise RunDirError(f"{run_url}: not a run directory (no run.json); start one with "
                          "`curate run --pool P --out RUN`")
    return parse_pipeline(m.get("config"), f"{run_url}/run.json config")
