"""``curate diff``: compare two runs' curated sets (the logic is :mod:`curate.app.diff`)."""

from __future__ import annotations

import typer

from curate.errors import CurateError


def run_diff(run_a: str, run_b: str, fmt: str, html: str | None, sql: str | None,
             out: str | None) -> None:
    from curate.app.diff import changed, connect_pair, summary
    from curate.cli_query import emit_table

    con = connect_pair(run_a, run_b)
    if sql is not None:
        import duckdb

        try:
            table = con.sql(sql).to_arrow_table()
        except duckdb.Error as err:
            raise CurateError(f"diff --sql: {str(err).splitlines()[0]}") from None
        emit_table(table, fmt if fmt != "summary" else "table", out, 40)
        return
    if fmt == "csv":  # one row per changed uid
        emit_table(changed(con), "csv", out, 0)
        return
    if fmt != "summary":
        raise CurateError(f"--format {fmt!r}: expected summary or csv")
    s = summary(con, run_a, run_b)
    typer.echo(f"A {run_a}: {s['kept_a']:,} curated pairs")
    typer.echo(f"B {run_b}: {s['kept_b']:,} curated pairs")
    typer.echo(f"B adds {s['added']:,} and removes {s['removed']:,} (in both: "
               f"{s['kept_a'] - s['removed']:,})")
    for r in s["stages"]:
        if r["delta"]:
            typer.echo(f"  {r['stage']:<16} kept {r['a']:>12,} -> {r['b']:>12,} "
                       f"({r['delta']:+,})")
    for e in s.get("entries", [])[:5]:
        typer.echo(f"  entry {str(e['entry'])[:30]:<30} {e['final_a']:>8,} -> "
                   f"{e['final_b']:>8,} ({e['delta']:+,})")
    if html:
        from curate.report.diff_page import render

        sample = [tuple(r) for r in con.execute(
            "SELECT uid, change FROM diff ORDER BY hash(uid) LIMIT 20").fetchall()]
        with open(html, "w", encoding="utf-8") as f:
            f.write(render(s, sample))
        typer.echo(f"page: {html}")
