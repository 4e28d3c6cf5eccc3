"""``curate diff RUN_A RUN_B``: which pairs the second curated set adds and removes, and how
its shape moved (stage by stage, entry by entry, cluster by cluster).

DataComp users compare subsets by trading uid lists; here both run directories are attached
to one DuckDB connection as schemas ``a`` and ``b`` (each with its own views, as
``curate query`` defines them), and ``diff`` is a view: ``uid``, ``change`` (``added``: in
B's ``curated/`` only; ``removed``: in A's only). DuckDB does the set difference, spilling
to disk when it must, so nothing here holds a run's uids in Python.
"""

from __future__ import annotations

import json
from typing import Any

from curate.core.rundir import RunDir
from curate.errors import CurateError

DIFF_VIEW = """CREATE VIEW main.diff AS
SELECT coalesce(a.uid, b.uid) AS uid,
       CASE WHEN a.uid IS NULL THEN 'added' ELSE 'removed' END AS change
FROM (SELECT DISTINCT uid FROM a.curated) a
FULL OUTER JOIN (SELECT DISTINCT uid FROM b.curated) b USING (uid)
WHERE a.uid IS NULL OR b.uid IS NULL"""


def connect_pair(run_a: str, run_b: str) -> Any:
    """DuckDB with schemas ``a`` and ``b`` (each run's views) and the view ``diff``."""
    import duckdb

    from curate.app.query import define_views

    con = duckdb.connect()
    for schema, run in (("a", run_a), ("b", run_b)):
        rd = RunDir(run)
        if not rd.fs.exists(rd.path("curated")):
            raise CurateError(f"{run}: no curated/ folder (run emit first)")
        con.execute(f"CREATE SCHEMA {schema}")
        con.execute(f"SET schema = '{schema}'")  # views bind to their own schema
        define_views(con, run)
    con.execute("SET schema = 'main'")
    con.execute(DIFF_VIEW)
    return con


def _scalar(con: Any, sql: str) -> Any:
    return con.execute(sql).fetchall()[0][0]


def _has(con: Any, schema: str, view: str) -> bool:
    return bool(_scalar(con, "SELECT count(*) FROM information_schema.tables WHERE "
                        f"table_schema = '{schema}' AND table_name = '{view}'"))


def summary(con: Any, run_a: str, run_b: str, top: int = 15) -> dict[str, Any]:
    """Counts, stages, entries and clusters of both runs, for the terminal and the page."""
    out: dict[str, Any] = {"a": run_a, "b": run_b}
    out["kept_a"] = _scalar(con, "SELECT count(DISTINCT uid) FROM a.curated")
    out["kept_b"] = _scalar(con, "SELECT count(DISTINCT uid) FROM b.curated")
    for change in ("added", "removed"):
        out[change] = _scalar(con, f"SELECT count(*) FROM diff WHERE change = '{change}'")
    out["stages"] = _stages(run_a, run_b)
    if _has(con, "a", "concepts") and _has(con, "b", "concepts"):
        out["entries"] = [dict(zip(("entry_id", "entry", "final_a", "final_b", "delta", "head"),
                                   r)) for r in con.execute(f"""
            SELECT entry_id, coalesce(x.entry, y.entry), coalesce(x.count_final, 0),
                   coalesce(y.count_final, 0),
                   coalesce(y.count_final, 0) - coalesce(x.count_final, 0) AS d,
                   coalesce(x.head, y.head)
            FROM a.concepts x FULL OUTER JOIN b.concepts y USING (entry_id)
            WHERE d <> 0 ORDER BY abs(d) DESC, entry_id LIMIT {int(top)}""").fetchall()]
        out["head_tail"] = {s: dict(zip(("head", "tail"), con.execute(
            f"SELECT coalesce(sum(count_final) FILTER (WHERE head), 0), "
            f"coalesce(sum(count_final) FILTER (WHERE NOT head), 0) FROM {s}.concepts"
        ).fetchone())) for s in ("a", "b")}
    if _has(con, "a", "prune") and _has(con, "b", "prune"):
        out["clusters"] = {s: con.execute(
            f"SELECT count(*), min(n), median(n), max(n) FROM (SELECT cluster_id, "
            f"count(*) FILTER (WHERE kept) AS n FROM {s}.prune GROUP BY cluster_id)"
        ).fetchone() for s in ("a", "b")}
        out["cluster_sizes"] = {s: [r[0] for r in con.execute(
            f"SELECT count(*) FILTER (WHERE kept) FROM {s}.prune GROUP BY cluster_id"
        ).fetchall()] for s in ("a", "b")}
    return out


def _stages(run_a: str, run_b: str) -> list[dict[str, Any]]:
    """Per stage instance (in A's order, then B's new ones): pairs kept in each run."""
    runs = []
    for run in (run_a, run_b):
        rd = RunDir(run)
        with rd.fs.open(rd.path("run.json"), "r") as f:
            runs.append(json.load(f))
    names: list[str] = []  # pipeline order (run.json's stage keys are sorted)
    for m in runs:
        order = (m.get("config") or {}).get("stages") or sorted(m.get("stages", {}))
        names += [n for n in order if n not in names]
    rows = [{"stage": "ingest", "a": runs[0].get("pool", {}).get("rows"),
             "b": runs[1].get("pool", {}).get("rows")}]
    for n in names:
        ka, kb = (m.get("stages", {}).get(n, {}).get("kept") for m in runs)
        rows.append({"stage": n, "a": ka, "b": kb})
    for r in rows:
        r["delta"] = (r["b"] - r["a"]) if isinstance(r["a"], int) and isinstance(
            r["b"], int) else None
    return rows


def changed(con: Any) -> Any:
    """The ``diff`` view as an Arrow table, removed first, then added, by uid."""
    return con.sql("SELECT uid, change FROM diff ORDER BY change DESC, uid").to_arrow_table()
