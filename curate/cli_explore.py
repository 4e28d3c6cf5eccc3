"""``curate index`` (and the explore app's command): declared here, bodies in
:mod:`curate.app.index`. :mod:`curate.cli` calls :func:`register` once with its error
wrapper (``handled``: one line and an exit code per CurateError) and its logging setup,
passed in rather than imported so the two modules do not import each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


def register(app: typer.Typer, handled: Callable[[Any], Any],
             setup_logging: Callable[[bool], None]) -> None:
    """Add ``index`` (and ``explore``) to ``app``."""

    @app.command("index")
    @handled
    def index(
        run_dir: Annotated[str, typer.Argument(metavar="RUN")],
        pairs: Annotated[str, typer.Option(help="kept: the curated pairs (emit's output, else "
                                           "the last deciding stage's survivors); all: every "
                                           "pair with an embedding, dropped ones too")]
        = "kept",
        memory: Annotated[str, typer.Option(help="the index's memory budget (picks the kind)")]
        = "4GB",
        kind: Annotated[str, typer.Option(help="auto, or a FAISS key: Flat, IVF{n},Flat|SQ8, "
                                          "IVF{n}_HNSW32,PQ{m}x8")] = "auto",
        verbose: Verbose = False,
    ) -> None:
        """A kNN index over RUN's image (and text) embeddings: RUN/index/ (autofaiss's
        choice of kind for the count and --memory; recall@10 measured against exact search)."""
        from curate.app.index import build_index

        setup_logging(verbose)
        info = build_index(run_dir, pairs, memory, kind)
        state = "up to date" if info.get("up_to_date") else f"built in {info['build_seconds']} s"
        which = ("every pair with an embedding" if info["pairs"] == "all"
                 else f"kept, as {info['selected_by']} decided")
        typer.echo(f"{run_dir}/index: {info['n']:,} pairs ({which}; embeddings of "
                   f"{info['source']['stage']}), {state}")
        for which, one in info["indexes"].items():
            typer.echo(f"  {which}: {one['kind']}, {one['d']}-d, {one['memory_bytes']:,} bytes, "
                       f"nprobe {one['nprobe'] or '-'}, recall@10 {one['recall_at_10']:.3f} "
                       f"on {one['recall_queries']:,} held-out pairs")

    @app.command("explore")
    @handled
    def explore(
        run_dir: Annotated[str, typer.Argument(metavar="RUN")],
        host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this "
                                          "machine only)")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port to listen on", min=1, max=65535)] = 8765,
        show_sensitive: Annotated[bool, typer.Option(
            "--show-sensitive", help="do not blur thumbnails that may be unsafe (what a "
            "safety rule dropped stays hidden)")] = False,
    ) -> None:
        """A local, read-only web app to search and browse RUN: more like this, by image or
        text, filters, clusters, pairs, subsets to export (needs `curate index RUN`)."""
        from curate.app.explore import serve

        serve(run_dir, host, port, show_sensitive)
