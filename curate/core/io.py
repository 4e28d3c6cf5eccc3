"""Filesystem helpers over fsspec: shard names, atomic Parquet writes, shard metadata.

Every shard file is written under a temporary name and renamed into place, so a crash never
leaves a half-written file that looks finished. A shard carries its own provenance in the
Parquet footer (key ``curate``): the stage fingerprint, a digest of its input and its counts.
That makes "is this shard done?" a footer read, and resume a listing.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"curate"
SHARD_RE = re.compile(r"part-(\d{5,})\.parquet$")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_index(name: str) -> int:
    m = SHARD_RE.search(name)
    if not m:
        raise ValueError(f"not a shard file name: {name}")
    return int(m.group(1))


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def write_parquet_atomic(
    fs: fsspec.AbstractFileSystem,
    path: str,
    table: pa.Table,
    meta: dict[str, Any] | None = None,
    compression: str = "zstd",
    row_group_size: int = 8192,
) -> None:
    """Write ``table`` to ``path`` via a temporary sibling and a rename.

    Without dictionary encoding: curate's columns are unique strings (uid, url, caption),
    numbers and id lists, where a dictionary is built, overflows and is dropped page after
    page. Measured on a 50k-row pool shard: writing 34 -> 20 ms, reading 26 -> 5 ms, and
    the file 7% smaller (zstd catches the repeats a dictionary would, reason codes too).
    """
    if meta is not None:
        md = dict(table.schema.metadata or {})
        md[META_KEY] = json.dumps(meta, sort_keys=True).encode()
        table = table.replace_schema_metadata(md)
    write_atomic(fs, path, lambda f: pq.write_table(
        table, f, compression=compression, row_group_size=row_group_size,
        use_dictionary=False))


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    write_atomic(fs, path, lambda f: f.write(data))


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, write: Any) -> None:
    """``write(file)`` to a temporary name beside ``path``, then rename it there (a reader
    sees the old file or the whole new one); the temporary file is removed on failure."""
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        if is_local(fs):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:  # noqa: BLE001 - best effort cleanup, the original error matters
            pass
        raise


def read_shard_meta(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The ``curate`` footer of a shard, or None when the file is missing or unreadable."""
    try:
        with fs.open(path, "rb") as f:
            md = pq.read_schema(f).metadata or {}
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return None
    raw = md.get(META_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def read_table(
    fs: fsspec.AbstractFileSystem, path: str, columns: list[str] | None = None
) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def list_shards(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    """Sorted shard file names (``part-NNNNN.parquet``) in ``directory``."""
    try:
        names = fs.ls(directory, detail=False)
    except FileNotFoundError:
        return []
    out = [n.rsplit("/", 1)[-1] for n in names]
    return sorted(n for n in out if SHARD_RE.fullmatch(n))
