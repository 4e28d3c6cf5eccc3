"""The explore app's HTML pages (jinja2 templates in ``templates/``) and its files: the
thumbnails and the exports. Work that reads files runs in a thread, off the event loop."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from curate.app.explore.export import FORMATS, export
from curate.app.explore.filters import Filters, is_number
from curate.app.explore.results import compute
from curate.errors import InputError

#: pairs per side on a cluster page, and per side in each row of the cluster list
CLUSTER_SIDE = 48
CLUSTER_PEEK = 3
CLUSTERS_PER_PAGE = 50
#: neighbours on a pair page
PAIR_NEIGHBOURS = 12


def _ex(request: Request) -> Any:
    return request.app.state.ex


def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    ex = _ex(request)
    page = ex.templates.get_template(name).render(
        run=ex.run, withheld=ex.store.withheld(), model=ex.searcher.model,
        index=getattr(ex.searcher.index, "info", None) or {},
        show_sensitive=ex.show_sensitive, blurs=bool(ex.thumbs.view.nsfw),
        has_clusters=ex.store.clusters_view is not None, qs=_qs, **ctx)
    return HTMLResponse(page, status_code=status)


def _qs(params: dict[str, Any], **change: Any) -> str:
    merged = {**params, **change}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def with_thumbs(ex: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each row with whether it has a thumbnail and whether that is blurred."""
    got = ex.thumbs.prepare([r["uid"] for r in rows])
    for r in rows:
        data, blurred = got.get(r["uid"], (None, False))
        r["thumb"], r["blurred"] = data is not None, blurred
    return rows


async def _params(request: Request) -> tuple[dict[str, str], bytes | None]:
    params = dict(request.query_params)
    upload = None
    if request.method == "POST":
        form = await request.form()
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                data = await value.read()
                upload = data or upload
            else:
                params[key] = str(value)
    return params, upload


def _options(ex: Any) -> dict[str, Any]:
    s = ex.store
    numeric = [c for c, t in s.columns.items() if is_number(t)
               and c not in ("cluster_id", "width", "height", "original_width",
                             "original_height")]
    return {"stages": [r.name for r in s.deciding] + ["not processed"],
            "reasons": s.distinct("reason"), "langs": s.distinct("lang"),
            "ranges": numeric, "columns": list(s.columns)}


async def index(request: Request) -> HTMLResponse:
    ex = _ex(request)
    params, upload = await _params(request)

    def work() -> dict[str, Any]:
        res = compute(ex, params, upload)
        with_thumbs(ex, res.rows + ([res.query["row"]] if "row" in res.query else []))
        return {"res": res}

    ctx: dict[str, Any] = {"params": {k: v for k, v in params.items() if k != "image"},
                           "options": _options(ex), "formats": FORMATS}
    try:
        ctx.update(await run_in_threadpool(work))
    except InputError as err:
        return render(request, "index.html", 400, error=str(err), res=None, **ctx)
    except LookupError:
        return render(request, "index.html", 404, res=None, **ctx,
                      error=f"no pair {params.get('uid')!r} to search from")
    return render(request, "index.html", **ctx)


async def pair(request: Request) -> HTMLResponse:
    ex = _ex(request)
    uid = request.path_params["uid"]

    def work() -> dict[str, Any]:
        state = ex.store.lookup(uid)
        if state != "visible":
            return {"state": state}
        row = with_thumbs(ex, ex.store.rows([uid]))[0]
        row["chain"] = ex.store.chain(row)
        out: dict[str, Any] = {"state": state, "row": row, "stages": ex.store.stage_rows(uid)}
        try:
            hits, withheld = ex.searcher.neighbors(uid, PAIR_NEIGHBOURS)
            score = dict(hits)
            rows = with_thumbs(ex, ex.store.rows([u for u, _ in hits]))
            for r in rows:
                r["similarity"] = score[r["uid"]]
                r["chain"] = ex.store.chain(r)
            out.update(neighbours=rows, neighbours_withheld=withheld)
        except InputError as err:
            out["neighbours_error"] = str(err)
        return out

    ctx = await run_in_threadpool(work)
    if ctx["state"] != "visible":  # a hash-list match reads exactly as an unknown uid
        note = ("a safety rule dropped this pair: it is counted, never shown"
                if ctx["state"] == "withheld" else "no such pair in this run")
        return render(request, "pair.html", 404, uid=uid, row=None, note=note)
    return render(request, "pair.html", uid=uid, **ctx)


async def clusters(request: Request) -> HTMLResponse:
    ex = _ex(request)
    order = request.query_params.get("order") or "size"
    try:
        offset = max(0, int(request.query_params.get("offset") or 0))
    except ValueError:
        offset = 0

    def work() -> dict[str, Any]:
        rows = ex.store.clusters(order, CLUSTERS_PER_PAGE, offset)
        peek = ex.store.cluster_peek([r["cluster_id"] for r in rows], CLUSTER_PEEK)
        with_thumbs(ex, [p for ps in peek.values() for side in ps.values() for p in side])
        for r in rows:
            r["peek"] = peek.get(r["cluster_id"], {"kept": [], "dropped": []})
        return {"clusters": rows, "total": ex.store.cluster_count()}

    try:
        ctx = await run_in_threadpool(work)
    except InputError as err:
        return render(request, "clusters.html", 400, error=str(err), clusters=[], total=0,
                      order=order, offset=offset, per_page=CLUSTERS_PER_PAGE)
    return render(request, "clusters.html", order=order, offset=offset,
                  per_page=CLUSTERS_PER_PAGE, **ctx)


async def cluster(request: Request) -> HTMLResponse:
    ex = _ex(request)
    cid = request.path_params["cid"]

    def work() -> dict[str, Any]:
        info = [r for r in ex.store.clusters("cluster_id", 1, 0, only=cid)]
        side = {}
        for kept in (True, False):
            f = Filters(cluster=cid, kept="kept" if kept else "dropped")
            rows = with_thumbs(ex, ex.store.page(f, CLUSTER_SIDE, 0))
            for r in rows:
                r["chain"] = ex.store.chain(r)
            side["kept" if kept else "dropped"] = rows
        return {"info": info[0] if info else None, **side}

    ctx = await run_in_threadpool(work)
    status = 200 if ctx["info"] else 404
    return render(request, "cluster.html", status, cid=cid, side=CLUSTER_SIDE, **ctx)


async def _subset(request: Request) -> tuple[dict[str, str], list[str], Any]:
    """(params, uids) of what the request's search or filter shows; posted ``uids`` (an
    uploaded image's results) are taken as they are."""
    ex = _ex(request)
    params, upload = await _params(request)
    if params.get("uids"):
        return params, params["uids"].split(), None

    def work() -> tuple[list[str], Any]:
        if any(params.get(k) for k in ("uid", "text", "path")) or upload:
            res = compute(ex, params, upload)
            return [r["uid"] for r in res.rows], res
        f = Filters.from_query(params)
        return ex.store.uids(f), None

    uids, res = await run_in_threadpool(work)
    return params, uids, res


async def export_page(request: Request) -> HTMLResponse:
    try:
        params, uids, _ = await _subset(request)
    except (InputError, LookupError) as err:
        return render(request, "export.html", 400, error=str(err), params={}, uids=[],
                      formats=FORMATS)
    params.pop("format", None)
    return render(request, "export.html", params=params, uids=uids, formats=FORMATS)


async def export_file(request: Request) -> Response:
    ex = _ex(request)
    try:
        params, uids, _ = await _subset(request)
        fmt = params.get("format") or "uids"
        data, media, name = await run_in_threadpool(export, ex.store, uids, fmt)
    except (InputError, LookupError) as err:
        return Response(f"curate explore: {err}\n", 400, media_type="text/plain")
    return Response(data, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="subset-{name}"'})


async def thumb(request: Request) -> Response:
    ex = _ex(request)
    data, blurred = await run_in_threadpool(ex.thumbs.get, request.path_params["uid"])
    if data is None:
        return Response("no thumbnail\n", 404, media_type="text/plain")
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=600",
                             "X-Curate-Blurred": "1" if blurred else "0"})
