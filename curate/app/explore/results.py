"""One request's result grid, shared by the pages and the JSON API.

A request is either a **search** (``uid``: more like this pair; ``text``; ``path``: a local
image file; or an uploaded image) — the ``k`` nearest visible pairs, best first, then
narrowed by the filter if one is given — or a **filter** alone: a page of the rows that
match, ``limit`` at a time from ``offset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from curate.app.explore.filters import Filters
from curate.errors import InputError

#: neighbours a search shows unless ``k`` says otherwise
K = 48
#: rows a filter page shows unless ``limit`` says otherwise
LIMIT = 100
MAX_LIMIT = 1000


@dataclass
class Result:
    mode: str  # "uid" | "text" | "path" | "image" | "filter"
    filters: Filters
    rows: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0  # filter: matching rows; search: rows shown
    withheld: int = 0  # search: nearer pairs a safety rule dropped (counted, not shown)
    query: dict[str, Any] = field(default_factory=dict)
    k: int = K
    limit: int = LIMIT
    offset: int = 0


def _int(params: Any, key: str, default: int, lo: int, hi: int) -> int:
    raw = str(params.get(key) or "").strip()
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise InputError(f"{key}: {raw!r} is not a whole number") from None
    if not lo <= v <= hi:
        raise InputError(f"{key}: {v} is not between {lo} and {hi}")
    return v


def compute(ex: Any, params: Any, upload: bytes | None = None) -> Result:
    """The grid for ``params`` (a query string or form; ``upload``: an image's bytes)."""
    from curate.app.explore.search import MAX_K

    f = Filters.from_query(params)
    k = _int(params, "k", K, 1, MAX_K)
    limit = _int(params, "limit", LIMIT, 1, MAX_LIMIT)
    offset = _int(params, "offset", 0, 0, 10**12)
    uid = str(params.get("uid") or "").strip()
    text = str(params.get("text") or "").strip()
    path = str(params.get("path") or "").strip()
    s = ex.searcher
    if uid:
        hits, withheld = s.neighbors(uid, k)
        res = Result("uid", f, query={"uid": uid}, k=k)
        res.query["row"] = decorate(ex, ex.store.rows([uid]))[0]
    elif text:
        hits, withheld = s.by_vector(s.embed_text(text), k)
        res = Result("text", f, query={"text": text}, k=k)
    elif path:
        hits, withheld = s.by_vector(s.embed_path(path), k)
        res = Result("path", f, query={"path": path}, k=k)
    elif upload:
        hits, withheld = s.by_vector(s.embed_image(upload), k)
        res = Result("image", f, query={"image": "uploaded image"}, k=k)
    else:
        res = Result("filter", f, limit=limit, offset=offset)
        res.total = ex.store.count(f)
        res.rows = decorate(ex, ex.store.page(f, limit, offset))
        return res
    score = dict(hits)
    rows = ex.store.rows([u for u, _ in hits], f if f.active() else None)
    for r in rows:
        r["similarity"] = score[r["uid"]]
    res.rows, res.total, res.withheld = decorate(ex, rows), len(rows), withheld
    return res


def decorate(ex: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its decision chain; floats that are not numbers become None (JSON)."""
    for r in rows:
        for key, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                r[key] = None
        r["chain"] = ex.store.chain(r)
    return rows


def as_json(res: Result) -> dict[str, Any]:
    """The API's answer: rows with a thumbnail URL (the server decides if one is served)."""
    rows = [{**r, "thumb": f"/thumb/{r['uid']}"} for r in res.rows]
    out: dict[str, Any] = {"mode": res.mode, "total": res.total, "rows": rows,
                           "filters": res.filters.query()}
    if res.mode == "filter":
        out.update(limit=res.limit, offset=res.offset)
    else:
        out.update(k=res.k, withheld=res.withheld,
                   query={k: v for k, v in res.query.items() if k != "row"})
    return out
