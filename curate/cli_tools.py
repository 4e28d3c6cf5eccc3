"""The bodies of ``curate diff``, ``audit`` and ``takedown`` (logic in :mod:`curate.app`):
kept out of :mod:`curate.cli`, which only declares the commands' arguments."""

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


def run_audit(run_dir: str, reason: str | None, n: int, out: str | None,
              labels: list[str] | None) -> None:
    from curate.app import audit as au
    from curate.core.rundir import RunDir

    if labels:
        t = au.estimate(run_dir, labels)
        for r in t.to_pylist():
            typer.echo(f"{r['reason']:<28} {r['false_drops']:>5} of {r['labelled']:>5} false "
                       f"drops: {100 * r['rate']:5.1f}% (95% CI {100 * r['ci_low']:.1f}-"
                       f"{100 * r['ci_high']:.1f}%)")
        typer.echo(f"written: {RunDir(run_dir).path('audit', 'false_drops.parquet')}")
        return
    if reason is None:
        raise CurateError("give --reason CODE (write a labelling page) or --labels FILE")
    rd = RunDir(run_dir)
    path = out or rd.path("audit", f"{reason}.html")
    html = au.page(run_dir, reason, au.sample(run_dir, reason, n))
    rd.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with rd.fs.open(path, "w", encoding="utf-8") as f:
        f.write(html)
    typer.echo(f"page: {path}")


def run_takedown(run_dir: str, selectors: dict[str, str], why: str) -> None:
    from curate.app.takedown import takedown

    if not selectors:
        raise CurateError("give at least one of --uids, --urls, --domains, --images")
    r = takedown(run_dir, selectors, why)
    typer.echo(f"{r['matched']:,} pairs matched {r['rules']:,} rules; {r['rewritten']} "
               "curated shards rewritten; manifest: takedown/removed.parquet")


def run_publish(run_dir: str, out: str, webdataset: bool, overwrite: bool) -> None:
    from curate.app.publish import publish

    r = publish(run_dir, out, webdataset, overwrite)
    typer.echo(f"{r['dir']}: README.md, {r['shards']} Parquet shard(s) in data/"
               + (f", {r['tars']} tar(s) in wds/" if r["tars"] else ""))
    typer.echo(f"next: hf upload USER/NAME {r['dir']} --repo-type dataset "
               "(huggingface-cli upload with older huggingface_hub)")
