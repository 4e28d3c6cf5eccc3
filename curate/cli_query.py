"""``curate query``: SQL over a run's outputs, the interactive prompt, and result formatting.

Kept out of :mod:`curate.cli` because it is the one command with its own I/O loop and output
formats (table, csv, json, parquet), while the other commands only parse arguments and call
the library. DuckDB and the connection to the run's views come from :mod:`curate.app.query`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from curate.errors import CurateError

FORMATS = ("table", "csv", "json", "parquet")


def run_query(run_dir: str, sql: str | None, fmt: str, out: str | None, max_rows: int) -> None:
    """Run one statement and write its result, or (``sql`` None) open the prompt."""
    import duckdb

    from curate.app.query import connect
    from curate.core.rundir import RunDir

    if not RunDir(run_dir).fs.exists(RunDir(run_dir).path("pool")):
        raise CurateError(f"{run_dir}: not a run directory (no pool/ folder)")
    con = connect(run_dir)
    if sql is None:
        repl(con)
        return
    if fmt not in FORMATS:
        raise CurateError(f"--format {fmt!r}: expected table, csv, json or parquet")
    try:
        rel = con.sql(sql)
        if rel is None:
            return
        table = rel.to_arrow_table()
    except duckdb.Error as err:
        raise CurateError(f"query: {str(err).splitlines()[0]}") from None
    emit_table(table, fmt, out, max_rows)


def emit_table(table: Any, fmt: str, out: str | None, max_rows: int) -> None:
    """Write an Arrow table as ``fmt`` to ``out`` or stdout (table format: ``max_rows`` rows)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        if not out:
            raise CurateError("--format parquet needs --out FILE")
        pq.write_table(table, out)
        return
    if fmt == "csv":
        if out:
            pcsv.write_csv(table, out)
        else:
            import io

            buf = io.BytesIO()
            pcsv.write_csv(table, buf)
            sys.stdout.write(buf.getvalue().decode())
        return
    if fmt == "json":
        text = "\n".join(json.dumps(r, default=str) for r in table.to_pylist())
        if out:
            with open(out, "w") as f:
                f.write(text + "\n")
        else:
            typer.echo(text)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(*table.column_names, show_lines=False)
    for row in table.slice(0, max_rows).to_pylist():
        t.add_row(*[_cell(v) for v in row.values()])
    console = Console(file=open(out, "w") if out else None, width=200 if out else None)
    console.print(t)
    if table.num_rows > max_rows:
        console.print(f"({table.num_rows} rows, {max_rows} shown; --max-rows to see more)")


def _cell(v: Any) -> str:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def repl(con: Any) -> None:
    """The interactive prompt: statements end with ';', results print as tables."""
    import duckdb

    views = [r[0] for r in con.sql("SELECT view_name FROM duckdb_views() "
                                   "WHERE NOT internal").fetchall()]
    typer.echo(f"views: {', '.join(views)}; end a statement with ';', quit with .quit or ^D")
    buf = ""
    while True:
        try:
            line = input("curate> " if not buf else "   ...> ")
        except EOFError:
            typer.echo("")
            return
        if line.strip() in (".quit", ".exit", "\\q"):
            return
        buf += line + "\n"
        if not buf.strip().endswith(";"):
            continue
        try:
            rel = con.sql(buf)
            if rel is not None:
                emit_table(rel.to_arrow_table(), "table", None, 40)
        except duckdb.Error as err:
            typer.echo(f"error: {str(err).splitlines()[0]}", err=True)
        buf = ""
