"""Subsets: what a search or a filter shows, written as a file the rest of curate reads.

The app is read-only: an export is a download the browser saves, nothing is written into the
run directory. Only visible pairs are ever exported (rows of the ``explore`` view: a pair a
safety rule dropped is in no subset).

- ``uids``: one uid per line, for ``curate takedown RUN --uids FILE`` or
  ``download.denylist.uids``;
- ``urls``: one URL per line, for ``download.denylist.urls``;
- ``csv``: the rows as shown (uid, decision, caption, url, scores; a header line);
- ``parquet``: the same rows, for scripts;
- ``pool``: the subset's pool rows, every pool column (bytes and embeddings the pool
  brought included): a new pool for ``curate run --pool FILE``.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curate.errors import InputError

FORMATS = {
    "uids": ("text/plain; charset=utf-8", "uids.txt",
             "uid list: curate takedown RUN --uids FILE, or download.denylist.uids"),
    "urls": ("text/plain; charset=utf-8", "urls.txt", "URL list: download.denylist.urls"),
    "csv": ("text/csv; charset=utf-8", "rows.csv", "the rows as shown, with a header"),
    "parquet": ("application/vnd.apache.parquet", "rows.parquet", "the rows as shown"),
    "pool": ("application/vnd.apache.parquet", "pool.parquet",
             "the pairs' pool rows: a new pool for curate run --pool"),
}


def export(store: Any, uids: list[str], fmt: str) -> tuple[bytes, str, str]:
    """(file bytes, media type, file name) of the visible pairs among ``uids``, in order."""
    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    media, name, _ = FORMATS[fmt]
    keep = store.visible(uids)
    uids = [u for u in dict.fromkeys(uids) if u in keep]
    if fmt == "uids":
        return "".join(f"{u}\n" for u in uids).encode(), media, name
    if fmt == "pool":
        return _parquet(_table(store, "pool", uids)), media, name
    rows = _table(store, "explore", uids)
    if fmt == "urls":
        urls = rows["url"].to_pylist() if "url" in rows.column_names else []
        return "".join(f"{u}\n" for u in urls if u).encode(), media, name
    if fmt == "parquet":
        return _parquet(rows), media, name
    buf = io.BytesIO()
    pacsv.write_csv(_flat(rows), buf)
    return buf.getvalue(), media, name


def _table(store: Any, view: str, uids: list[str]) -> pa.Table:
    """``view``'s rows of ``uids``, in that order."""
    cur = store.cursor()
    cur.register("explore_want", pa.table({"uid": pa.array(uids, pa.string()),
                                           "explore_pos": pa.array(range(len(uids)),
                                                                   pa.int64())}))
    t = cur.sql(f'SELECT v.*, w.explore_pos FROM "{view}" v JOIN explore_want w '
                "USING (uid) ORDER BY w.explore_pos").to_arrow_table()
    return t.drop_columns(["explore_pos"])


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _flat(table: pa.Table) -> pa.Table:
    """CSV holds scalars: list columns (``entry_ids``) become their values joined by spaces."""
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type) \
                or pa.types.is_fixed_size_list(field.type):
            col = pc.cast(table.column(i), pa.list_(pa.string()))
            table = table.set_column(i, field.name, pc.binary_join(col, " "))
    return table
