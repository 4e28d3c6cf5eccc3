"""The JSON API under the pages (what scripts and the tests use).

- ``GET /api/info``: run, model (can it embed images? text? why not), columns, withheld
  counts.
- ``GET /api/neighbors?uid=U&k=K``: ``{"neighbors": [{"uid", "score"}, ...], "withheld":
  n}``, the K nearest visible pairs, best first, U itself excluded.
- ``GET /api/search?uid=U`` / ``?text=T`` / ``?path=P``, ``POST /api/search`` (multipart
  ``image``): the result rows, best first (``k``, filters as on the page).
- ``GET /api/pairs?<filters>&limit=&offset=``: ``{"total", "rows", ...}``, a page of the
  rows that match.
- ``GET /api/pair/U``: the pair's row, decision chain and every stage's row.
- ``GET /api/clusters?order=&limit=&offset=``: prune's clusters with kept, dropped and
  withheld counts.

Errors: 400 ``{"error": "one line"}`` for a bad request, 404 for a pair that is not there
(a hash list's match reads exactly as a uid that does not exist).
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from curate.app.explore.pages import _params
from curate.app.explore.results import as_json, compute
from curate.errors import InputError


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def reply(data: Any, status: int = 200) -> Response:
    body = json.dumps(_clean(data), default=str, ensure_ascii=False)
    return Response(body, status, media_type="application/json")


async def _run(fn: Any, *args: Any) -> Response:
    try:
        return reply(await run_in_threadpool(fn, *args))
    except InputError as err:
        return reply({"error": str(err)}, 400)
    except LookupError as err:
        return reply({"error": f"no pair {err.args[0]!r}" if err.args else "not found"}, 404)


async def info(request: Request) -> Response:
    ex = request.app.state.ex

    def work() -> dict[str, Any]:
        return {"run": ex.run, "model": ex.searcher.model, "columns": ex.store.columns,
                "withheld": ex.store.withheld(), "index": getattr(ex.searcher.index, "info",
                                                                  {}),
                "show_sensitive": ex.show_sensitive}

    return await _run(work)


async def neighbors(request: Request) -> Response:
    ex = request.app.state.ex
    q = request.query_params

    def work() -> dict[str, Any]:
        uid = (q.get("uid") or "").strip()
        if not uid:
            raise InputError("uid: required (/api/neighbors?uid=U&k=10)")
        try:
            k = int(q.get("k") or 10)
        except ValueError:
            raise InputError(f"k: {q.get('k')!r} is not a whole number") from None
        hits, withheld = ex.searcher.neighbors(uid, k)
        return {"uid": uid, "k": k, "withheld": withheld,
                "neighbors": [{"uid": u, "score": s} for u, s in hits]}

    return await _run(work)


async def search(request: Request) -> Response:
    ex = request.app.state.ex
    params, upload = await _params(request)
    if not any(params.get(k) for k in ("uid", "text", "path")) and not upload:
        return reply({"error": "give uid, text, path or a POSTed image"}, 400)
    return await _run(lambda: as_json(compute(ex, params, upload)))


async def pairs(request: Request) -> Response:
    ex = request.app.state.ex
    params = {k: v for k, v in request.query_params.items() if k not in ("uid", "text", "path")}
    return await _run(lambda: as_json(compute(ex, params)))


async def pair(request: Request) -> Response:
    ex = request.app.state.ex
    uid = request.path_params["uid"]

    def work() -> dict[str, Any]:
        if ex.store.lookup(uid) != "visible":
            raise LookupError(uid)
        row = ex.store.rows([uid])[0]
        return {"row": row, "chain": ex.store.chain(row),
                "stages": {view: r for view, r in ex.store.stage_rows(uid)}}

    return await _run(work)


async def clusters(request: Request) -> Response:
    ex = request.app.state.ex
    q = request.query_params

    def work() -> dict[str, Any]:
        try:
            limit, offset = int(q.get("limit") or 100), int(q.get("offset") or 0)
        except ValueError:
            raise InputError("limit/offset: whole numbers") from None
        return {"total": ex.store.cluster_count(),
                "clusters": ex.store.clusters(q.get("order") or "size", limit, offset)}

    return await _run(work)
