"""SQL over a run directory: a DuckDB connection with one view per stage output.

Every stage writes plain Parquet, so these views are conveniences, not a database: the same
files read with ``duckdb -c "SELECT ... FROM 'RUN/curated/*.parquet'"``, polars or pyarrow.
The views come from the stage registry: each stage instance's per-shard output is a view
named as its kind declares (``scores``, ``matches``, ...; a second instance of a kind is
named after the instance), and each extra file a kind declares (``entry_counts``,
``clusters``, ``concepts``) is one too. ``decisions`` is the view people ask for most: for
every pool uid, kept or not, which stage dropped it, the reason code and its detail.
"""

from __future__ import annotations

from typing import Any

from curate.core.io import is_local
from curate.core.rundir import RunDir

#: views whose files do not come from a stage
BASE_VIEWS = {"pool": ("pool", "part-*.parquet")}


def views_of(pipeline: Any) -> dict[str, tuple[str, str]]:
    """view name -> (folder, glob) for every output of the pipeline's stages."""
    out = dict(BASE_VIEWS)
    for ref in pipeline.refs():
        cls = pipeline.stage_class(ref.name)
        if cls.per_shard or cls.view is not None:  # emit declares its resharded view
            out[ref.view] = (ref.folder, "part-*.parquet")
        for file, view in cls.views.items():
            name = view if ref.name == ref.kind else f"{ref.name}_{view}"
            out[name] = (ref.folder, file)
    return out


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _pipeline(rd: RunDir) -> Any:
    from curate.stages.registry import recorded_pipeline

    try:
        return recorded_pipeline(rd.url)
    except Exception:  # noqa: BLE001 - a bare pool folder still gets its views
        return None


def connect(run: str, database: str = ":memory:") -> Any:
    """A DuckDB connection with the run's views defined (views for missing outputs are
    skipped, except ``decisions``, which is always there once the pool is)."""
    import duckdb

    con = duckdb.connect(database)
    define_views(con, run)
    return con


def define_views(con: Any, run: str) -> None:
    """The run's views, in the connection's current schema (``curate diff`` attaches two
    runs as schemas ``a`` and ``b``: DuckDB binds a view's body in its own schema)."""
    rd = RunDir(run)
    local = is_local(rd.fs)
    if not local:
        con.register_filesystem(rd.fs)
    prefix = rd.root if local else rd.url.split("://", 1)[0] + "://" + rd.root
    pipeline = _pipeline(rd)
    views = views_of(pipeline) if pipeline is not None else dict(BASE_VIEWS)
    present: set[str] = set()
    for view, (folder, pattern) in views.items():
        if not rd.fs.glob(rd.path(folder, pattern)):
            continue
        src = f"{prefix}/{folder}/{pattern}"
        con.execute(f'CREATE VIEW "{view}" AS SELECT * FROM read_parquet({_q(src)}, '
                    "union_by_name=true)")
        present.add(view)
    if "pool" in present:
        con.execute(decisions_sql(pipeline, present))


def decisions_sql(pipeline: Any, present: set[str]) -> str:
    """One row per pool uid: kept, the stage that dropped it, its reason code and detail.

    ``why`` is the same as ``reason`` (codes need no parsing); kept for queries written
    when reasons were free text.
    """
    refs = [r for r in pipeline.refs() if r.decides] if pipeline is not None else []
    deciding = [r for r in refs if r.view in present]
    joins, cases_stage, cases_reason, cases_detail = [], [], [], []
    for i, r in enumerate(deciding):
        a = f"d{i}"
        joins.append(f'LEFT JOIN (SELECT uid, kept, reason, detail FROM "{r.view}") {a} '
                     "USING (uid)")
        cases_stage.append(f"WHEN {a}.kept = false THEN {_q(r.name)}")
        cases_reason.append(f"WHEN {a}.kept = false THEN {a}.reason")
        cases_detail.append(f"WHEN {a}.kept = false THEN {a}.detail")
    if deciding:
        last = f"d{len(deciding) - 1}"
        kept = f"coalesce({last}.kept, false)" if len(deciding) == len(refs) else "NULL"
        stage_expr = (f"CASE {' '.join(cases_stage)} WHEN {last}.kept IS NULL "
                      "THEN 'not processed' END")
        reason_expr = (f"CASE {' '.join(cases_reason)} WHEN {last}.kept IS NULL "
                       "THEN 'not_processed' END")
        detail_expr = (f"CASE {' '.join(cases_detail)} WHEN {last}.kept IS NULL "
                       "THEN 'shard not processed (failed or not run yet)' END")
    else:
        kept, stage_expr, reason_expr, detail_expr = "true", "NULL", "NULL", "NULL"
    return (f"CREATE VIEW decisions AS SELECT uid, kept, dropped_by, reason, detail, "
            f"reason AS why FROM ("
            f"SELECT p.uid, {kept} AS kept, {stage_expr} AS dropped_by, "
            f"{reason_expr} AS reason, {detail_expr} AS detail "
            f"FROM (SELECT uid FROM pool) p {' '.join(joins)})")
