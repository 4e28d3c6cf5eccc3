"""The one module that talks to Ray: start it, map work over shards, retry, time out.

Embedded local Ray by default; with ``RAY_ADDRESS`` set the same calls run on a cluster.
Everything else in curate hands this module plain picklable callables and items, so the
algorithms never see Ray and the engine can change without touching them.

Failure policy (img2dataset's Ray distributor drops failed shards; we do not): a work item
that raises, whose worker dies, or that exceeds its time limit is retried ``max_retries``
times, then recorded as failed with its last error. Nothing hangs on a stuck worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from curate.core.packing import pack as _pack
from curate.core.packing import unpack as _unpack
from curate.core.work import Ledger, Outcome, Resources
from curate.errors import CurateError

log = logging.getLogger(__name__)

_INIT_BY_US = False


def init(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` when set, else start an embedded local Ray (once).

    ``num_gpus`` declares GPUs to the local Ray (None: Ray detects them); declaring one on a
    CPU machine is how tests exercise the GPU resource requests without a GPU."""
    global _INIT_BY_US
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = os.environ.get("RAY_ADDRESS")
    env_vars = {k: os.environ[k] for k in (
        "HF_HUB_OFFLINE", "NO_ALBUMENTATIONS_UPDATE", "WANDB_MODE", "CURATE_FAULT",
        "OPENBLAS_CORETYPE") if k in os.environ}
    if address:
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"env_vars": env_vars} if env_vars else None)
        log.info("connected to Ray cluster at %s", address)
    else:
        tmp = os.environ.get("CURATE_RAY_TMP") or os.path.join(
            tempfile.gettempdir(), f"curate-ray-{os.getuid()}")
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _temp_dir=tmp,
                 log_to_driver=False, configure_logging=False)
        log.info("started local Ray (%s CPUs)", ray.cluster_resources().get("CPU"))
    _INIT_BY_US = True


def is_initialized() -> bool:
    """Whether this process started or joined Ray; never imports it (a library caller that
    did not start Ray gets in-process execution where a module offers it)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def assigned_cpus() -> int:
    """CPUs Ray gave the calling worker; all of this machine's outside a Ray worker."""
    try:
        import ray

        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return max(1, os.cpu_count() or 1)


def assigned_gpus() -> float:
    """GPUs (or the share of one) Ray gave the calling worker; 0 outside a Ray worker."""
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return 0.0


def node_cpus(with_gpu: bool = False) -> int:
    """CPUs of the largest alive node (``with_gpu``: of those with a GPU): the most one task
    can be given (a task asking for more than any one node has is never scheduled)."""
    import ray

    sizes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")
             and (not with_gpu or n.get("Resources", {}).get("GPU", 0) > 0)]
    return max(1, int(max(sizes, default=1)))


def ship_by_value(module: Any) -> None:
    """Pickle ``module``'s classes by value when sent to workers (a plugin stage loaded from
    a file path, which workers on other hosts may not be able to import)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def in_flight_limit(res: Resources | None = None, max_in_flight: int | None = None,
                    num_actors: int | None = None) -> int:
    """How many items :func:`map_items` runs at once with these arguments: the most work
    a step can have in flight, which a cap shared by its workers is split by."""
    if num_actors:
        return num_actors
    init()
    res = res or Resources()
    return max_in_flight or max(1, int(cluster_cpus() / max(res.num_cpus, 0.01)))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def error_line(err: BaseException) -> str:
    """One line for a worker error: Ray wraps the real exception; show that."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return text[0][:500] if text else type(err).__name__


def _apply(fn: Callable[[Any], Any], item: Any, fault: tuple | None = None) -> Any:
    # the fault-injection hook (curate.core.faults) follows the driver's environment at submit
    # time, so tests can inject faults into a Ray instance that started before them
    if fault:
        os.environ["CURATE_FAULT"], os.environ["CURATE_DRIVER_PID"] = fault
    else:
        os.environ.pop("CURATE_FAULT", None)
    return _pack(fn(item))


class _Runner:
    """A long-lived worker (Ray actor): what ``fn`` caches (a model) lives as long as it."""

    def run(self, fn: Callable[[Any], Any], item: Any, fault: tuple | None) -> Any:
        return _apply(fn, item, fault)


#: the session's gate service (one actor, :class:`curate.core.slots.GateActor`)
GATES_ACTOR = "curate-gates"


def _gate_service(create: bool = False) -> Any:
    """The session's gate actor (None where there is none and ``create`` is false)."""
    import ray

    try:
        return ray.get_actor(GATES_ACTOR)
    except ValueError:
        if not create:
            return None
    from curate.core.slots import GateActor

    return ray.remote(GateActor).options(name=GATES_ACTOR, num_cpus=0,
                                          get_if_exists=True).remote()


@contextlib.contextmanager
def shared_gates(gates: dict[str, int], lease_s: float = 30.0):
    """Driver side of a cluster-wide cap: one slot table per name (``capacity`` slots per
    key) in the session's gate actor while the block runs; yields a dict filled with each
    gate's statistics on exit. Workers reach a gate by name with :func:`gate_leases`."""
    stats: dict[str, dict] = {}
    if not gates:
        yield stats
        return
    import ray

    init()
    service = _gate_service(create=True)
    ray.get([service.open.remote(name, cap, lease_s) for name, cap in gates.items()])
    try:
        yield stats
    finally:
        for name in gates:
            try:
                stats[name] = ray.get(service.close.remote(name), timeout=10)
            except Exception as err:  # noqa: BLE001 - statistics only
                log.warning("gate %s: no statistics (%s)", name, error_line(err))


def gate_leases(name: str, linger_s: float = 0.5):
    """A worker's client (:class:`curate.core.slots.Leases`) of the shared gate ``name``;
    None where there is none (no Ray, or no gate service): the caller's local cap is then
    the only one. A gate that is not open fails the first call, and the client then keeps
    to local caps too. The client is the process's, kept across shards: do not close it."""
    if not is_initialized():
        return None
    import uuid

    import ray

    cached = _LEASES.get(name)
    if cached is not None and not cached.open:
        return cached
    service = _gate_service()
    if service is None:
        return None
    from curate.core.slots import Leases

    holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"

    def lost(err: BaseException) -> None:
        log.warning("gate %s unreachable (%s): local caps only from now on", name, error_line(err))

    leases = _LEASES[name] = Leases(
        lambda want, give: ray.get(service.sync.remote(name, holder, want, give), timeout=60),
        linger_s=linger_s, on_error=lost)
    return leases


#: a worker's gate clients, kept across shards (no actor lookup, thread or first round trip
#: per shard: ~17 ms each, measured); a new table generation voids what they kept
_LEASES: dict[str, Any] = {}


def task_options(res: Resources) -> dict[str, Any]:
    """Ray options for a task or actor holding ``res``; ``gpus_if_any`` becomes a GPU
    request only when the cluster reports GPUs (Ray is up: called at map time)."""
    opts: dict[str, Any] = {"num_cpus": res.num_cpus, "max_retries": 0}
    if res.num_gpus:
        opts["num_gpus"] = res.num_gpus
    elif res.gpus_if_any and cluster_gpus() > 0:
        opts["num_gpus"] = res.gpus_if_any
    if res.memory:
        opts["memory"] = res.memory
    if res.extra:
        opts["resources"] = res.extra
    return opts


class _Pool:
    """What both modes share (a :class:`~curate.core.work.Pool` for the ledger): ship
    ``fn`` once, wait for results, read one and sort a failure into retried or fatal. As a
    context manager it leaves nothing running when the block ends, whether the map finished
    or stopped early (``on_done`` raised, a CurateError, Ctrl-C, a Ray error)."""

    def __init__(self, fn: Callable[[Any], Any], fault: tuple | None):
        import ray

        self.ray, self.fn_ref, self.fault = ray, ray.put(fn), fault
        self.busy: dict[Any, Any] = {}  # ref in flight -> its actor (None: a task)

    def wait(self, refs: list[Any], timeout_s: float) -> list[Any]:
        """Every ended ref, after waiting at most ``timeout_s`` for one: the ledger's loop
        and Ray's wait (linear in ``refs``) then run once per batch, not per result."""
        ready, rest = self.ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready and rest:
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return ready

    def result(self, ref: Any) -> tuple[bool, Any]:
        """(True, the value) or (False, one line of error); raises what no retry can help."""
        from ray.exceptions import RayActorError

        try:
            value = _unpack(self.ray.get(ref))
        except Exception as err:  # noqa: BLE001 - every worker failure is retried
            self.settled(ref, healthy=not isinstance(err, RayActorError))
            cause = getattr(err, "cause", None)
            if isinstance(cause, CurateError):
                raise cause from None  # bad input/config: retrying cannot help
            return False, error_line(err)
        self.settled(ref, healthy=True)
        return True, value

    def stuck(self, ref: Any) -> None:
        self.settled(ref, healthy=False)

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: Any) -> None:
        if kind is not None and self.busy:
            log.warning("stopping early (%s): cancelling %d items in flight", kind.__name__,
                        len(self.busy))
        self.close()


class _Tasks(_Pool):
    """Task mode: one Ray task per attempt, at most ``limit`` at once; a stuck one is
    cancelled (its worker process killed)."""

    def __init__(self, fn: Callable[[Any], Any], fault: tuple | None, opts: dict[str, Any],
                 limit: int):
        super().__init__(fn, fault)
        self.limit, self.remote = limit, self.ray.remote(_apply).options(**opts)

    def submit(self, item: Any) -> Any:
        ref = self.remote.remote(self.fn_ref, item, self.fault)
        self.busy[ref] = None
        return ref

    def settled(self, ref: Any, healthy: bool) -> None:
        del self.busy[ref]
        if not healthy:  # stuck: stop it
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        for ref in self.busy:
            with contextlib.suppress(Exception):  # must not hide the error being raised
                self.ray.cancel(ref, force=True)
        self.busy.clear()


class _Actors(_Pool):
    """Actor mode: at most ``limit`` long-lived actors, one attempt each at a time, started
    as attempts need them; a dead or stuck one is killed, and the next attempt starts its
    replacement (the ledger starts no more than ``limit`` at once: the pool keeps its size)."""

    def __init__(self, fn: Callable[[Any], Any], fault: tuple | None, opts: dict[str, Any],
                 num_actors: int):
        super().__init__(fn, fault)
        self.limit, self.free = num_actors, []
        self.cls = self.ray.remote(_Runner).options(
            max_restarts=0, **{k: v for k, v in opts.items() if k != "max_retries"})

    def submit(self, item: Any) -> Any:
        actor = self.free.pop() if self.free else self.cls.remote()
        ref = actor.run.remote(self.fn_ref, item, self.fault)
        self.busy[ref] = actor
        return ref

    def settled(self, ref: Any, healthy: bool) -> None:
        actor = self.busy.pop(ref)
        if healthy:
            self.free.append(actor)
        else:
            self.ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Kill every actor, busy (its attempt dies with it) or free."""
        for actor in [*self.busy.values(), *self.free]:
            with contextlib.suppress(Exception):  # must not hide the error being raised
                self.ray.kill(actor, no_restart=True)
        self.busy.clear()
        self.free.clear()


def map_items(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    resources: Resources | None = None,
    max_retries: int = 2,
    timeout_s: float | None = None,
    max_in_flight: int | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    desc: str = "",
    num_actors: int | None = None,
) -> list[Outcome]:
    """Run ``fn(item)`` for every item; return one Outcome per item, in order.

    As Ray tasks by default, or on ``num_actors`` long-lived actors (each holding
    ``resources``, e.g. one GPU): then whatever ``fn`` loads once per process (a model) is
    loaded once per actor. Bounded in flight (backpressure; a stuck item cannot starve the
    queue); each item has a wall-clock limit after which its task is cancelled (or its actor
    killed and replaced) and the item retried (:class:`~curate.core.work.Ledger`). An
    early stop cancels the tasks in flight and kills the actors before the error propagates.
    """
    init()
    res = resources or Resources()
    items = list(items)
    if not items:
        return []
    opts = task_options(res)
    fault = ((os.environ["CURATE_FAULT"], str(os.getpid()))
             if os.environ.get("CURATE_FAULT") else None)
    from curate.core.progress import bar

    with bar(desc or getattr(fn, "__name__", "work"), total=len(items)) as advance:
        book = Ledger(items, max_retries=max_retries, timeout_s=timeout_s, on_done=on_done,
                      advance=advance, desc=desc)
        pool = (_Actors(fn, fault, opts, num_actors) if num_actors
                else _Tasks(fn, fault, opts, in_flight_limit(res, max_in_flight)))
        with pool:
            book.run(pool)
    return book.results()
