"""The run directory: manifest, lock, stage fingerprints and which pairs survive so far.

Layout (docs/ARCHITECTURE.md, "Run directory"): ``run.json`` plus one folder per stage
instance holding ``part-NNNNN.parquet`` files, shard N of every stage matching pool shard N.
Which folder belongs to which stage is the registry's business (curate.stages.registry);
this module only knows folders. The driver is the only writer of
``run.json``; workers only write shard files (atomically), so a crash at any point leaves
a directory that a rerun of the same command resumes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import socket
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate import __version__
from curate.core.io import (
    is_local,
    join,
    list_shards,
    read_table,
    url_to_fs,
    write_bytes_atomic,
)
from curate.errors import RunDirError

log = logging.getLogger(__name__)

def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "curate": __version__}
    for pkg in ("ray", "pyarrow", "duckdb", "img2dataset", "open_clip_torch", "torch", "faiss-gpu"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def uid_digest(uids: pa.Array | pa.ChunkedArray) -> str:
    """Order-independent digest of a set of uids: what a shard's input *is*.

    Hashes the sorted array's offsets and bytes (no Python objects per uid).
    """
    if isinstance(uids, pa.ChunkedArray):
        uids = (uids.combine_chunks() if uids.num_chunks
                else pa.array([], uids.type))
    arr = pc.take(uids.cast(pa.large_string()), pc.sort_indices(uids))
    h = hashlib.sha256(str(len(arr)).encode())
    _, offsets, data = arr.buffers()
    if len(arr):
        import numpy as np

        off = np.frombuffer(offsets, np.int64, len(arr) + 1)
        h.update(off.tobytes())
        if data is not None:
            h.update(memoryview(data)[: int(off[-1])])
    return h.hexdigest()[:32]


class RunDir:
    """A run directory on any fsspec filesystem."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") or url
        self.fs, self.root = url_to_fs(self.url)
        self._lock_fd: int | None = None
        self._lock_path: str | None = None

    # ---------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def stage_dir(self, folder: str) -> str:
        return self.path(folder)

    def shard_path(self, folder: str, shard: str) -> str:
        return join(self.path(folder), shard)

    def pool_shards(self) -> list[str]:
        return list_shards(self.fs, self.path("pool"))

    def exists(self) -> bool:
        return self.fs.exists(self.path("run.json"))

    # ---------------------------------------------------------------- manifest
    def load_manifest(self) -> dict[str, Any]:
        p = self.path("run.json")
        if not self.fs.exists(p):
            return {}
        try:
            with self.fs.open(p, "rb") as f:
                return json.loads(f.read())
        except ValueError as err:
            raise RunDirError(f"{self.url}/run.json: not valid JSON ({err})") from None

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated"] = now()
        # No indent: with one, json.dumps runs Python's pure encoder (~5x slower; ~0.5 s a
        # save at 200,000 shards). Read it with `jq . run.json` or `python -m json.tool`.
        data = json.dumps(manifest, sort_keys=True, default=str).encode()
        write_bytes_atomic(self.fs, self.path("run.json"), data)

    # ---------------------------------------------------------------- lock
    def lock(self) -> None:
        """Take the run's lock or fail at once: two runs never interleave in one directory."""
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"{self.url}: cannot create run directory ({err.strerror})") from None
        if is_local(self.fs):
            import fcntl

            path = os.path.join(self.root, ".lock")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise RunDirError(f"{path}: cannot open lock file ({err.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunDirError(
                    f"{self.url}: locked by {holder}; another curate run is using this directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now()}\n".encode(),
                      0)
            self._lock_fd = fd
        else:
            # Object stores have no flock: a lock object, refused while present.
            # Best effort (no compare-and-swap); documented in the README.
            path = self.path(".lock")
            if self.fs.exists(path):
                with self.fs.open(path, "rb") as f:
                    holder = f.read().decode(errors="replace").strip()
                raise RunDirError(f"{self.url}: locked by {holder}; remove {path} if that run died")
            holder = f"pid {os.getpid()} on {socket.gethostname()} since {now()}"
            write_bytes_atomic(self.fs, path, holder.encode())
            self._lock_path = path

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._lock_path is not None:
            try:
                self.fs.rm(self._lock_path)
            except FileNotFoundError:
                pass
            self._lock_path = None

    def __enter__(self) -> RunDir:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    # ---------------------------------------------------------------- pairs so far
    def read(self, folder: str, shard: str, columns: list[str] | None = None) -> pa.Table:
        return read_table(self.fs, self.shard_path(folder, shard), columns)

    def column_for(self, folder: str, shard: str, uids: pa.Array | pa.ChunkedArray,
                   column: str) -> pa.Array:
        """``column`` of a stage's output for ``uids`` (in their order; null where absent):
        how a stage reads an earlier one's embeddings or images for its own pairs."""
        t = self.read(folder, shard, ["uid", column])
        if isinstance(uids, pa.ChunkedArray):
            uids = uids.combine_chunks()
        return pc.take(t[column].combine_chunks(),
                       pc.index_in(uids, value_set=t["uid"].combine_chunks()))

    def kept_uids(self, folder: str, shard: str) -> pa.Array:
        t = self.read(folder, shard, ["uid", "kept"])
        return t.filter(pc.fill_null(t["kept"], False))["uid"].combine_chunks()

    def survivors(self, deciding: list[str], shard: str,
                  columns: list[str] | None = None) -> pa.Table:
        """Pool rows of ``shard`` that every earlier deciding stage kept.

        ``deciding``: the folders of the deciding stages before, in order. Each stage only
        sees what the stages before it kept, so the last one's ``kept`` uids are exactly the
        survivors.
        """
        pool = self.read("pool", shard, columns)
        if not deciding:
            return pool
        kept = self.kept_uids(deciding[-1], shard)
        return pool.filter(pc.is_in(pool["uid"], value_set=kept))


def count_survivors(run_url: str, deciding: list[str], shard: str) -> tuple[int, str]:
    """How many pairs of ``shard`` reach a stage, and a digest of them (pool shards are
    immutable, so the set fixes their order)."""
    uids = RunDir(run_url).survivors(deciding, shard, ["uid"])["uid"]
    return len(uids), uid_digest(uids)


def step_info(record: dict[str, Any] | None, step: str) -> dict[str, Any]:
    """What global step ``step`` of a stage committed: run.json's
    ``stages.<name>.steps.<step>.info`` for the stage record ``record`` ({} when absent).
    Each step's info stays under its own name, so two steps may use one key."""
    info = (((record or {}).get("steps") or {}).get(step) or {}).get("info")
    return info if isinstance(info, dict) else {}


def step_infos(record: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every global step's info of a stage record, by step name, in the order they ran."""
    return {s: step_info(record, s) for s in ((record or {}).get("steps") or {})}
