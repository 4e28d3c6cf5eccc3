"""The stage contract (docs/ARCHITECTURE.md, "Stages"): a stage declares itself in one module.

A stage kind is a :class:`Stage` subclass whose class attributes say what it is — ``kind``,
output ``folder``, whether it ``decides`` (writes ``kept``/``reason``/``detail`` per uid), its
``Config`` model, output ``schema``, the ``reasons`` codes it may write, the columns it
``joins`` into curated rows and the extra files it publishes as SQL ``views`` — and whose
``steps()`` list what the driver runs, in order. There are two kinds of step:

- :class:`ShardStep`: ``process(shard, inputs) -> table`` once per pool shard, in workers.
  Resume is the shard file's footer: a shard whose footer carries the stage fingerprint and
  the digest of its input is not processed again.
- :class:`GlobalStep`: ``plan() -> items`` on the driver, ``map(item) -> result`` in workers
  (one engine call), ``fold(acc, result)`` as results arrive (so the driver keeps O(1)
  state), ``commit(acc) -> info`` on the driver. Resume is the step's record in run.json.

The driver (:mod:`curate.driver`) runs every step the same way; stages never call the
engine themselves (a shared cap across workers is declared by :meth:`Stage.gates` and taken
through :meth:`Stage.gate`). What a stage's earlier global steps committed (``self.state``) reaches
its workers with the :class:`StageSpec`, so a map or a shard sees e.g. the entry-count
digest or the k-means scratch folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from curate.config import Section
from curate.core.engine import Resources
from curate.core.rundir import RunDir, uid_digest
from curate.stages._counts import detail_kinds

#: the decision columns every deciding stage's shard output ends with
DECISION_FIELDS = [pa.field("kept", pa.bool_()), pa.field("reason", pa.string()),
                   pa.field("detail", pa.string())]


@dataclass(frozen=True)
class StageRef:
    """What other code needs to know of a stage instance without building it."""

    name: str
    kind: str
    folder: str
    decides: bool
    view: str


@dataclass(frozen=True)
class StageSpec:
    """Everything a worker needs to rebuild a stage instance: picklable, small."""

    name: str
    run_url: str
    #: the whole pipeline, as recorded in run.json (sections by instance name)
    config: dict[str, Any]
    fingerprint: str
    #: per-invocation options (e.g. download's retry_failed)
    options: dict[str, Any] = field(default_factory=dict)
    #: what this stage's earlier global steps committed, by step name
    state: dict[str, Any] = field(default_factory=dict)
    #: each cluster-wide cap of :meth:`Stage.gates` as the driver split it for the shard
    #: step: ``what -> (slots per key each task holds alone, slots per key in the gate)``
    gates: dict[str, tuple[int, int]] = field(default_factory=dict)

    def key(self) -> str:
        payload = json.dumps([self.name, self.run_url, self.fingerprint, self.options,
                              self.state, self.gates], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class ShardStep:
    """The per-shard step: ``Stage.process`` over every pool shard that reaches the stage."""

    name: str = "shards"


def append(acc: list, item: Any, result: Any) -> list:
    """The default fold: keep every (small) result, in completion order."""
    acc.append((item, result))
    return acc


def _nothing(item: Any) -> None:
    return None


@dataclass
class GlobalStep:
    """plan (driver) -> map (workers, one engine call) -> fold (driver) -> commit (driver)."""

    name: str
    plan: Callable[[], list[Any]]
    map: Callable[[Any], Any]
    commit: Callable[[Any], dict[str, Any]]
    fold: Callable[[Any, Any, Any], Any] = append
    start: Callable[[], Any] = list
    resources: Resources | None = None
    #: digest of what it reads from outside the run directory (part of its resume key)
    version: Callable[[], str] | None = None

    @classmethod
    def on_driver(cls, name: str, commit: Callable[[Any], dict[str, Any]]) -> GlobalStep:
        """A step with no items: its commit alone (check a model, write a summary file)."""
        return cls(name, plan=list, map=_nothing, commit=commit)


class Stage:
    """Base class of every stage kind; see the module docstring for the contract."""

    kind: ClassVar[str]
    #: output folder in the run directory (an instance named otherwise uses its own name)
    folder: ClassVar[str]
    #: SQL view over the per-shard output (an instance named otherwise uses its own name)
    view: ClassVar[str | None] = None
    decides: ClassVar[bool] = False
    #: whether it writes one output file per pool shard (emit and report do not)
    per_shard: ClassVar[bool] = True
    #: skip no global step on a rerun (the report describes the run as it is now)
    always_rerun: ClassVar[bool] = False
    #: kinds that must come earlier in the pipeline (balance needs match)
    requires: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[BaseModel]] = Section
    #: the per-shard output's schema, decision columns included (None: no per-shard output)
    schema: ClassVar[pa.Schema | None] = None
    #: drop reason code -> what it means (docs, report); codes are stable
    reasons: ClassVar[dict[str, str]] = {}
    #: columns of the per-shard output that emit joins into curated rows
    joins: ClassVar[tuple[str, ...]] = ()
    #: extra files in the folder -> SQL view name
    views: ClassVar[dict[str, str]] = {}
    #: pool columns the per-shard step reads (None: all)
    pool_columns: ClassVar[list[str] | None] = None
    #: codes of a safety rule (drops never a picture, §8.13) / counted per kind of detail
    sensitive: ClassVar[tuple[str, ...]] = ()
    count_detail_kinds: ClassVar[tuple[str, ...]] = ()
    #: one line for the CLI (`curate <kind> RUN`) and the docs
    help: ClassVar[str] = ""
    #: for docs/ARCHITECTURE.md's generated tables (curate.app.doc_tables), what the other
    #: attributes cannot say: a cell's note by column (language: ``{"decides": "with
    #: `languages`"}``), and the sections its steps are listed with — the first the base
    #: (``{}``: defaults), each further one a variant whose steps differ
    doc_notes: ClassVar[dict[str, str]] = {}
    doc_sections: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def __init__(self, spec: StageSpec, pipeline: Any):
        """``pipeline``: the already parsed :class:`~curate.stages.registry.Pipeline` of
        ``spec.config`` (the driver's own; in a worker, :func:`curate.stages.runtime.build`
        parses each recorded config once per process)."""
        self.spec = spec
        self.name = spec.name
        self.pipeline = pipeline
        self.cfg = self.pipeline  # pipeline-wide sections: cfg.run, cfg.pool
        self.section = self.pipeline.section(spec.name)
        #: the one rule, as the registry's StageRef has it (a class's ``decides`` unless
        #: ``decides_with`` says otherwise for this section)
        self.decides = self.pipeline.ref(spec.name).decides
        self.rd = RunDir(spec.run_url)
        i = self.pipeline.stages.index(spec.name)
        #: the instances before this one, in order
        self.before: list[StageRef] = [self.pipeline.ref(n) for n in self.pipeline.stages[:i]]
        self.state = spec.state
        #: the pool shards this run of the stage covers (set by the driver, for plans)
        self.shards: list[str] = []
        #: the pool's columns as preflight read them before ingest (None: not known yet;
        #: :func:`curate.stages._needs.pool_names` then reads the run directory's pool)
        self.preflight_pool: list[str] | None = None

    @classmethod
    def decides_with(cls, section: Any) -> bool:
        """Whether an instance with this validated section decides. ``decides`` by default;
        a kind whose filter is optional (language: only with ``languages``) overrides it;
        ``Stage.__init__`` sets ``self.decides`` from it (and the kind its ``schema``)."""
        return cls.decides

    @classmethod
    def sensitive_with(cls, section: Any) -> tuple[str, ...]:
        """The reason codes of an instance with this section that a safety rule writes
        (``sensitive`` by default; classifier: unless its section says it is not one)."""
        return cls.sensitive

    # ----------------------------------------------------------------- declaration
    def steps(self) -> list[ShardStep | GlobalStep]:
        return [ShardStep()]

    def resources(self) -> Resources:
        return Resources(num_cpus=1)

    def max_in_flight(self) -> int | None:
        return None

    def num_actors(self) -> int | None:
        """Run shards on this many long-lived actors instead of tasks (a model per actor)."""
        return None

    def gates(self) -> dict[str, int]:
        """Cluster-wide caps the shard step's workers share, ``what -> slots per key``
        (download: ``{"hosts": per_host}``). The driver splits each over the tasks it runs
        at once (:func:`curate.core.slots.split`): each task holds ``reserved`` slots per
        key alone, and the rest is a gate, open while the shard step runs, that a worker
        takes slots of with :meth:`gate`; :meth:`gate_share` tells a worker its split."""
        return {}

    def split_gates(self) -> bool:
        """Whether the driver splits :meth:`gates` over the tasks at once (False: every
        slot through the gate)."""
        return True

    def gate_share(self, what: str) -> tuple[int, int] | None:
        """(reserved, shared) of cap ``what`` for this run's shard step; None outside the
        driver's shard step (a stage run by hand: the whole cap per task)."""
        return self.spec.gates.get(what)

    def gate_name(self, what: str) -> str:
        """The cluster-wide name of this run's and stage's gate ``what``."""
        tag = hashlib.sha256(f"{self.spec.run_url}|{self.name}".encode()).hexdigest()[:16]
        return f"curate-gate-{tag}-{what}"

    def gate(self, what: str) -> Any:
        """A worker's client of gate ``what`` (:class:`curate.core.slots.Leases`: acquire,
        release; the process's, kept across shards), or None without a gate service
        (then local caps only)."""
        from curate.core import engine

        return engine.gate_leases(self.gate_name(what))

    def preflight(self) -> list[str]:
        """What this instance needs that is missing, one line each (weights, heads, files,
        pool columns), checked on the driver before any stage runs and before Ray starts:
        a run that cannot finish stops at once (exit 2), nothing downloaded. Empty: ready."""
        return []

    # ----------------------------------------------------------------- helpers
    def deciding_before(self) -> list[str]:
        return [r.folder for r in self.before if r.decides]

    def previous(self, kind: str) -> StageRef | None:
        """The nearest earlier instance of ``kind`` (balance finds its match, ...)."""
        for ref in reversed(self.before):
            if ref.kind == kind:
                return ref
        return None

    def survivors(self, shard: str, columns: list[str] | None = None) -> pa.Table:
        return self.rd.survivors(self.deciding_before(), shard, columns)

    # ----------------------------------------------------------------- per-shard step
    def setup(self) -> None:
        """Once per worker process, before the first shard."""

    def inputs(self, shard: str) -> pa.Table:
        return self.survivors(shard, self.pool_columns)

    def input_digest(self, shard: str, inputs: pa.Table) -> str:
        """What a shard's output was made from (kept in its footer; a resumed run redoes a
        shard whose digest changed). From ``inputs`` and ``self.state`` only: the driver
        skips a finished stage whose inputs and state are unchanged without asking."""
        state = json.dumps(self.state, sort_keys=True, default=str)
        return uid_digest(inputs["uid"]) + hashlib.sha256(state.encode()).hexdigest()[:8]

    def needs_rerun(self, meta: dict[str, Any]) -> bool:
        """Process a shard again although its output is current (e.g. retry failures).
        Asked per shard only when the stage runs its shards: a finished stage with the same
        inputs and no options (``--retry-failed``) is skipped by the driver."""
        return False

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        raise NotImplementedError


def decisions(kept: Any, reason: Any, detail: Any = None) -> dict[str, pa.Array]:
    """The three decision columns from a kept mask and reason codes (null where kept)."""
    kept = pa.array(kept, pa.bool_()) if not isinstance(kept, pa.Array | pa.ChunkedArray) \
        else kept
    null = pa.scalar(None, pa.string())
    reason = pc.if_else(kept, null, reason if isinstance(reason, pa.Array | pa.ChunkedArray)
                        else pa.array(reason, pa.string()))
    if detail is None:
        detail = pa.nulls(len(kept), pa.string())
    elif not isinstance(detail, pa.Array | pa.ChunkedArray):
        detail = pa.array(detail, pa.string())
    return {"kept": kept, "reason": reason, "detail": pc.if_else(kept, null, detail)}


def summarize(decides: bool, table: pa.Table, rows_in: int, by: tuple[str, ...] = ()
              ) -> dict[str, Any]:
    """Counts for one shard: pairs in, kept, and dropped per reason code; for the codes in
    ``by`` also per kind of their detail, ``by_detail`` (:func:`_counts.detail_kinds`)."""
    counts: dict[str, Any] = {"rows_in": rows_in, "rows_out": table.num_rows,
                              "kept": table.num_rows, "dropped": {}}
    if decides and "kept" in table.column_names:
        kept = pc.fill_null(table["kept"], False)
        counts["kept"] = int(pc.sum(kept).as_py() or 0)
        dropped = table.filter(pc.invert(kept))
        vc = pc.value_counts(pc.fill_null(dropped["reason"], "unknown").combine_chunks())
        counts["dropped"] = {str(v["values"]): int(v["counts"]) for v in vc.to_pylist()}
        counts.update(detail_kinds(dropped, by))
    return counts


def output_digest(table: pa.Table) -> str:
    """What a shard's decisions are (kept uids): later stages' resume keys depend on it."""
    if "kept" in table.column_names:
        table = table.filter(pc.fill_null(table["kept"], False))
    return uid_digest(table["uid"])
