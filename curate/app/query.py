"""SQL over a run directory: a DuckDB connection with one view per stage output.

Every stage writes plain Parquet, so these views are conveniences, not a database: the same
files read with ``duckdb -c "SELECT ... FROM 'RUN/curated/*.parquet'"``, polars or pyarrow.
``decisions`` is the view people ask for most: for every pool uid, kept or not, and which
stage dropped it and why.
"""

from __future__ import annotations

from typing import Any

from curate.core.io import is_local
from curate.core.rundir import DECIDING, REASON_DETAIL, RunDir

#: view name -> (folder, file glob)
VIEWS = {
    "pool": ("pool", "part-*.parquet"),
    "images": ("images", "part-*.parquet"),
    "scores": ("scores", "part-*.parquet"),
    "matches": ("match", "part-*.parquet"),
    "entry_counts": ("balance", "entry_counts.parquet"),
    "balance": ("balance", "part-*.parquet"),
    "clusters": ("prune", "clusters.parquet"),
    "prune": ("prune", "part-*.parquet"),
    "curated": ("curated", "part-*.parquet"),
    "concepts": ("reports", "concept_frequency.parquet"),
}


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def connect(run: str, database: str = ":memory:") -> Any:
    """A DuckDB connection with the run's views defined (views for missing outputs are
    skipped, except ``decisions``, which is always there once the pool is)."""
    import duckdb

    rd = RunDir(run)
    con = duckdb.connect(database)
    local = is_local(rd.fs)
    if not local:
        con.register_filesystem(rd.fs)
    prefix = rd.root if local else rd.url.split("://", 1)[0] + "://" + rd.root
    present: set[str] = set()
    for view, (folder, pattern) in VIEWS.items():
        if not rd.fs.glob(rd.path(folder, pattern)):
            continue
        src = f"{prefix}/{folder}/{pattern}"
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({_q(src)}, "
                    "union_by_name=true)")
        present.add(view)
    if "pool" in present:
        con.execute(decisions_sql(rd, present))
    return con


def decisions_sql(rd: RunDir, present: set[str]) -> str:
    """One row per pool uid: kept, the stage that dropped it and the reason."""
    try:
        stages = rd.config().stages
    except Exception:  # noqa: BLE001 - a bare pool folder still gets a decisions view
        stages = []
    view_of = {"download": "images", "score": "scores", "balance": "balance", "prune": "prune"}
    deciding = [s for s in stages if s in DECIDING and view_of[s] in present]
    joins, cases_stage, cases_reason = [], [], []
    for i, s in enumerate(deciding):
        a = f"d{i}"
        joins.append(f"LEFT JOIN (SELECT uid, kept, reason FROM {view_of[s]}) {a} USING (uid)")
        cases_stage.append(f"WHEN {a}.kept = false THEN '{s}'")
        cases_reason.append(f"WHEN {a}.kept = false THEN {a}.reason")
    pending = [s for s in stages if s in DECIDING]
    if deciding:
        last = f"d{len(deciding) - 1}"
        kept = f"coalesce({last}.kept, false)" if len(deciding) == len(pending) else "NULL"
        stage_expr = (f"CASE {' '.join(cases_stage)} WHEN {last}.kept IS NULL "
                      "THEN 'not processed' END")
        reason_expr = (f"CASE {' '.join(cases_reason)} WHEN {last}.kept IS NULL "
                       "THEN 'shard not processed (failed or not run yet)' END")
    else:
        kept, stage_expr, reason_expr = "true", "NULL", "NULL"
    # ``why``: the reason without its details (the error text, the uid it duplicates), for
    # GROUP BY; the same stems as the stage counts in run.json
    return (f"CREATE VIEW decisions AS SELECT uid, kept, dropped_by, reason, "
            f"regexp_replace(reason, {_q(REASON_DETAIL)}, '') AS why FROM ("
            f"SELECT p.uid, {kept} AS kept, {stage_expr} AS dropped_by, {reason_expr} AS reason "
            f"FROM (SELECT uid FROM pool) p {' '.join(joins)})")

