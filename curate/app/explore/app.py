"""Build the explore app: open the run and its index, then a Starlette app of pages and API.

:func:`open_explorer` does everything that can fail before a server starts (the run, its
index, the views), so ``curate explore`` reports a missing run or index as one line with
exit 2 instead of a server that answers errors. :func:`make_app` wires the routes; the
handlers are in :mod:`curate.app.explore.pages` (HTML) and :mod:`curate.app.explore.api`
(JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import InputError

HERE = Path(__file__).parent


@dataclass
class Explorer:
    """Everything a request handler needs, built once per app."""

    run: str
    store: Any
    thumbs: Any
    searcher: Any
    show_sensitive: bool
    templates: Any


def open_explorer(run: str, show_sensitive: bool = False) -> Explorer:
    """The run's store, thumbnails and searcher; InputError (exit 2) for a missing run or a
    run without a kNN index (``curate index RUN`` builds it)."""
    import jinja2

    from curate.app.explore.data import Store
    from curate.app.explore.search import Searcher
    from curate.app.explore.thumbs import Thumbs
    from curate.core.rundir import RunDir

    rd = RunDir(run)
    if not rd.exists():
        raise InputError(f"{run}: not a run directory (no run.json); start one with "
                         "`curate run --pool P --out RUN`")
    index = _index(run)
    store = Store(run)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    return Explorer(run, store, Thumbs(store, show_sensitive), Searcher(store, index),
                    show_sensitive, env)


def _index(run: str) -> Any:
    from curate.app.index import open_index
    from curate.errors import CurateError

    try:
        return open_index(run, "image")
    except (CurateError, FileNotFoundError) as err:
        raise InputError(f"{run}: no kNN index to search ({str(err).splitlines()[0]}); "
                         f"build it first: curate index {run} (--pairs all: the dropped "
                         "pairs too)") from None


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if 0 < abs(v) < 0.01 else f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def make_app(ex: Explorer) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from curate.app.explore import api, pages

    routes = [
        Route("/", pages.index, methods=["GET", "POST"]),
        Route("/pair/{uid:path}", pages.pair),
        Route("/clusters", pages.clusters),
        Route("/cluster/{cid:int}", pages.cluster),
        Route("/export", pages.export_page, methods=["GET", "POST"]),
        Route("/export/file", pages.export_file, methods=["GET", "POST"]),
        Route("/thumb/{uid:path}", pages.thumb),
        Route("/api/info", api.info),
        Route("/api/neighbors", api.neighbors),
        Route("/api/search", api.search, methods=["GET", "POST"]),
        Route("/api/pairs", api.pairs),
        Route("/api/pair/{uid:path}", api.pair),
        Route("/api/clusters", api.clusters),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.ex = ex
    return app


def serve(run: str, host: str, port: int, show_sensitive: bool) -> None:
    """Open the run, check the port, then serve until Ctrl-C."""
    import socket

    import uvicorn

    ex = open_explorer(run, show_sensitive)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as err:
            raise InputError(f"--host {host} --port {port}: cannot listen there "
                             f"({err.strerror}); pick another --port") from None
    print(f"curate explore: http://{host}:{port}/ (read-only; Ctrl-C stops)", flush=True)
    uvicorn.run(make_app(ex), host=host, port=port, log_level="warning")
