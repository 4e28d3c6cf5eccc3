"""The explore app's reads: DuckDB over the run's views, and the safety rule built in.

:func:`curate.app.query.connect` gives the run's views (``decisions``, ``pool``, one per
stage output). On top of them this module defines, once per app:

- ``explore_hidden``: a table of every pair a **safety rule** dropped (``Pipeline.sensitive()``:
  download's ``denylisted`` — the hash lists among them —, nsfw's ``nsfw``/``violent``,
  toxicity's ``toxic``, a safety classifier's). Only the first deciding stage that says
  ``kept = false`` drops a pair (later stages never see it), so ``decisions.dropped_by``
  and ``reason`` name the rule.
- ``explore``: one row per pool pair **not** in ``explore_hidden`` (a table read once for a
  run of up to :data:`MATERIALISE` pairs, else a view): the ``decisions``
  columns, the pool's caption/url/lang, and every stage's joined columns (what emit joins
  into curated rows: ``clip_score``, ``aesthetic_score``, ``punsafe``, ``cluster_id``, ...;
  a name an earlier stage already gave is prefixed with the instance name, as emit does).

Every grid, neighbour list, cluster page, export and API answer reads rows from ``explore``
alone, so a pair a safety rule dropped is never a row anywhere: it is only counted
(:meth:`Store.withheld`). A DuckDB connection is not shared between threads: each call takes
its own cursor.
"""

from __future__ import annotations

import threading
from typing import Any

from curate.app.explore.filters import Filters
from curate.app.query import _q, connect
from curate.core.io import is_local
from curate.core.rundir import RunDir
from curate.errors import InputError
from curate.stages.emit import joined_names

#: runs of at most this many pairs get ``explore`` as an in-memory table, not a view
MATERIALISE = 2_000_000
#: stage columns never put into the explore view (bytes and vectors: the pair page says
#: they exist, the thumbnail shows the image)
SKIP = {"image", "image_emb", "text_emb", "face_bboxes", "kept", "reason", "detail", "uid"}


class Store:
    """One run's rows as the app may show them."""

    def __init__(self, run: str) -> None:
        from curate.stages.registry import recorded_pipeline

        self.rd = RunDir(run)
        self.manifest = self.rd.load_manifest()
        self.pipeline = recorded_pipeline(run)
        self.refs = self.pipeline.refs()
        self._con = connect(run)
        self._lock = threading.Lock()
        self.views = {r[0] for r in self._con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
        if "pool" not in self.views:
            raise InputError(f"{run}: the run has no pool shards yet (run `curate run` first)")
        self.deciding = [r for r in self.refs if r.decides and r.view in self.views]
        self.sensitive = self.pipeline.sensitive()
        self.joined: dict[str, tuple[str, str]] = {}  # explore column -> (view, column)
        self._define()
        self.columns = {r[0]: r[1] for r in self._con.execute("DESCRIBE explore").fetchall()}
        self.prune = next((r for r in self.refs if r.kind == "prune" and r.view in self.views),
                          None)
        #: the explore column of prune's cluster id (``cluster_id`` unless an earlier stage
        #: joined that name)
        self.cluster_col = next((n for n, (v, c) in self.joined.items() if self.prune
                                 and v == self.prune.view and c == "cluster_id"), None)
        self.clusters_view = (None if self.prune is None else
                              "clusters" if self.prune.name == self.prune.kind
                              else f"{self.prune.name}_clusters")
        if self.clusters_view not in self.views:
            self.clusters_view = None

    # ------------------------------------------------------------------ definitions
    def cursor(self) -> Any:
        with self._lock:
            return self._con.cursor()

    def view_columns(self, view: str) -> dict[str, str]:
        return {r[0]: r[1] for r in self._con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE "
            "table_name = ? ORDER BY ordinal_position", [view]).fetchall()}

    def _define(self) -> None:
        con = self._con
        cond = []
        for r in self.deciding:
            codes = sorted(c for n, c in self.sensitive if n == r.name)
            if codes:
                cond.append(f"(dropped_by = {_q(r.name)} AND reason IN "
                            f"({', '.join(_q(c) for c in codes)}))")
        con.execute("CREATE TABLE explore_hidden AS SELECT uid, dropped_by, reason FROM "
                    f"decisions WHERE {' OR '.join(cond) or 'FALSE'}")
        pool = self.view_columns("pool")
        select = ["d.uid", "d.kept", "d.dropped_by", "d.reason", "d.detail"]
        select += [f'p."{c}"' for c in ("caption", "url", "lang") if c in pool]
        taken = {s.rsplit(".", 1)[-1].strip('"') for s in select}
        joins = []
        for i, r in enumerate(self.refs):
            if r.view not in self.views:
                continue
            have = self.view_columns(r.view)
            cols = [c for c in self.pipeline.stage_class(r.name).joins
                    if c in have and c not in SKIP]
            if not cols:
                continue
            named = joined_names(r.name, cols, taken)
            self.joined.update((n, (r.view, c)) for c, n in named)
            inner = ", ".join(f'"{c}" AS "{n}"' for c, n in named)
            joins.append(f'LEFT JOIN (SELECT uid, {inner} FROM "{r.view}") j{i} USING (uid)')
            select += [f'j{i}."{n}"' for _, n in named]
        pool_cols = ", ".join(f'"{c}"' for c in ("caption", "url", "lang") if c in pool)
        # a run of up to MATERIALISE pairs is read once into memory (~100-300 bytes a pair):
        # every page then queries a table instead of re-joining every stage's files
        small = self.pool_rows() <= MATERIALISE
        kind = "TABLE" if small else "VIEW"
        con.execute(f"CREATE {kind} explore AS SELECT {', '.join(select)} FROM decisions d "
                    f"JOIN (SELECT uid{', ' + pool_cols if pool_cols else ''} FROM pool) p "
                    f"USING (uid) {' '.join(joins)} "
                    "WHERE d.uid NOT IN (SELECT uid FROM explore_hidden)")
        local = is_local(self.rd.fs)
        prefix = (self.rd.root if local
                  else self.rd.url.split("://", 1)[0] + "://" + self.rd.root)
        con.execute(f"CREATE {kind} explore_shards AS SELECT uid, parse_filename(filename) AS "
                    f"shard FROM read_parquet({_q(prefix + '/pool/part-*.parquet')}, "
                    "filename=true)")

    def pool_rows(self) -> int:
        """Pairs in the pool, from run.json (else counted)."""
        n = (self.manifest.get("pool") or {}).get("rows")
        if isinstance(n, int):
            return n
        return int(self._con.execute("SELECT count(*) FROM pool").fetchone()[0])

    # ------------------------------------------------------------------ rows
    def _fetch(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        cur = self.cursor()
        res = cur.execute(sql, params)
        names = [d[0] for d in res.description]
        return [dict(zip(names, row)) for row in res.fetchall()]

    def count(self, f: Filters) -> int:
        where, params = f.sql(self.columns, self.cursor())
        return int(self.cursor().execute(f"SELECT count(*) FROM explore WHERE {where}",
                                         params).fetchone()[0])

    def page(self, f: Filters, limit: int, offset: int) -> list[dict[str, Any]]:
        where, params = f.sql(self.columns, self.cursor())
        return self._fetch(f"SELECT * FROM explore WHERE {where} ORDER BY "
                           f"{f.order_sql(self.columns)} LIMIT {int(limit)} OFFSET "
                           f"{int(offset)}", params)

    def uids(self, f: Filters) -> list[str]:
        where, params = f.sql(self.columns, self.cursor())
        return [r[0] for r in self.cursor().execute(
            f"SELECT uid FROM explore WHERE {where} ORDER BY {f.order_sql(self.columns)}",
            params).fetchall()]

    def rows(self, uids: list[str], f: Filters | None = None) -> list[dict[str, Any]]:
        """The visible rows among ``uids`` (that pass ``f``), in the order of ``uids``."""
        if not uids:
            return []
        where, params = (f or Filters()).sql(self.columns, self.cursor())
        cur = self._wanting(uids)
        res = cur.execute(f"SELECT e.* FROM explore e JOIN explore_want USING (uid) WHERE "
                          f"{where}", params)
        names = [d[0] for d in res.description]
        got = {row[0]: dict(zip(names, row)) for row in res.fetchall()}
        return [got[u] for u in uids if u in got]

    def visible(self, uids: list[str]) -> set[str]:
        """The uids among ``uids`` that are pool pairs no safety rule dropped (rows of the
        ``explore`` view, which holds no other)."""
        if not uids:
            return set()
        return {r[0] for r in self._wanting(uids).execute(
            "SELECT uid FROM explore JOIN explore_want USING (uid)").fetchall()}

    def _wanting(self, uids: list[str]) -> Any:
        """A cursor on which ``explore_want`` is the table of ``uids`` (a join, not an IN
        list of thousands of parameters)."""
        import pyarrow as pa

        cur = self.cursor()
        cur.register("explore_want", pa.table({"uid": pa.array(list(uids), pa.string())}))
        return cur

    def lookup(self, uid: str, indexed: bool = False) -> str:
        """``"visible"``, ``"withheld"`` (a safety rule dropped it, not a hash list: the page
        may say so) or ``"unknown"`` (no such pair, or a hash list's match: nothing at all).
        ``indexed``: the kNN index holds it, so it is a pool pair and the pool need not be
        scanned for it (a scan of the whole pool: 64 ms a request at 1M pairs)."""
        hit = self.cursor().execute("SELECT dropped_by, reason FROM explore_hidden WHERE uid "
                                    "= ?", [uid]).fetchall()
        if hit:
            return "unknown" if hit[0][1] == "denylisted" else "withheld"
        if indexed:
            return "visible"
        found = self.cursor().execute("SELECT count(*) FROM pool WHERE uid = ?", [uid])
        return "visible" if found.fetchone()[0] else "unknown"

    def withheld(self) -> list[dict[str, Any]]:
        """What safety rules dropped, counted per (stage, reason): all a page says of them."""
        return self._fetch("SELECT dropped_by AS stage, reason, count(*) AS pairs FROM "
                           "explore_hidden GROUP BY ALL ORDER BY ALL", [])

    def distinct(self, column: str, limit: int = 200) -> list[Any]:
        if column not in self.columns:
            return []
        return [r[0] for r in self.cursor().execute(
            f'SELECT DISTINCT "{column}" FROM explore WHERE "{column}" IS NOT NULL ORDER BY 1 '
            f"LIMIT {int(limit)}").fetchall()]

    def shards_of(self, uids: list[str]) -> dict[str, str]:
        return dict(self._wanting(uids).execute("SELECT uid, shard FROM explore_shards JOIN "
                                                "explore_want USING (uid)").fetchall())

    # ------------------------------------------------------------------ a pair
    def chain(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Each deciding stage's verdict on a row, in pipeline order: every stage before the
        one that dropped it kept it (later stages only see what earlier ones kept)."""
        if row.get("dropped_by") == "not processed":  # its shard failed or has not run
            return [{"stage": "not processed", "kept": False, "reason": row.get("reason"),
                     "detail": row.get("detail")}]
        out = []
        for r in self.deciding:
            if row.get("dropped_by") == r.name:
                out.append({"stage": r.name, "kept": False, "reason": row.get("reason"),
                            "detail": row.get("detail")})
                break
            out.append({"stage": r.name, "kept": True, "reason": None, "detail": None})
        return out

    def stage_rows(self, uid: str) -> list[tuple[str, dict[str, Any]]]:
        """(view, its row for ``uid``) for the pool and every per-shard stage output that
        has one; bytes and vectors are described, not shown. Visible pairs only."""
        out = []
        for view in ["pool"] + [r.view for r in self.refs if r.view in self.views]:
            cols = self.view_columns(view)
            rows = self._fetch(f'SELECT * FROM "{view}" WHERE uid = ? LIMIT 1', [uid])
            if not rows:
                continue
            row = {}
            for k, v in rows[0].items():
                t = cols.get(k, "")
                if t == "BLOB":
                    row[k] = None if v is None else f"<{len(v):,} bytes>"
                elif k in ("image_emb", "text_emb") or (isinstance(v, list) and len(v) > 32):
                    row[k] = None if v is None else f"<{len(v)} numbers>"
                else:
                    row[k] = v
            out.append((view, row))
        return out

    # ------------------------------------------------------------------ clusters
    def clusters(self, order: str = "size", limit: int = 50, offset: int = 0,
                 only: int | None = None) -> list[dict[str, Any]]:
        """prune's clusters with the visible pairs kept and dropped in each (final
        decisions) and how many a safety rule withheld."""
        if self.clusters_view is None or self.cluster_col is None:
            return []
        col = self.cluster_col
        keys = self.view_columns(self.clusters_view)
        if order not in keys:
            raise InputError(f"order: clusters have no column {order!r} (they have "
                             f"{', '.join(keys)})")
        return self._fetch(
            f'SELECT c.*, coalesce(k.kept, 0) AS kept, coalesce(k.dropped, 0) AS dropped, '
            f'coalesce(h.withheld, 0) AS withheld FROM "{self.clusters_view}" c '
            f'LEFT JOIN (SELECT "{col}" AS cluster_id, count(*) FILTER (WHERE kept) AS kept, '
            "count(*) FILTER (WHERE NOT coalesce(kept, false)) AS dropped FROM explore "
            "GROUP BY ALL) k USING (cluster_id) "
            "LEFT JOIN (SELECT p.cluster_id, count(*) AS withheld FROM explore_hidden "
            f'JOIN "{self.prune.view}" p USING (uid) GROUP BY p.cluster_id) h '
            f'USING (cluster_id) {"" if only is None else f"WHERE cluster_id = {int(only)} "}'
            f'ORDER BY "{order}" DESC NULLS LAST, cluster_id '
            f"LIMIT {int(limit)} OFFSET {int(offset)}", [])

    def cluster_peek(self, ids: list[int], n: int) -> dict[int, dict[str, list]]:
        """cluster id -> {"kept": rows, "dropped": rows}: the first ``n`` visible pairs of
        each side (by uid: a stable, arbitrary sample)."""
        if not ids or self.cluster_col is None:
            return {}
        col = self.cluster_col
        rows = self._fetch(
            f'SELECT * EXCLUDE (explore_rn) FROM (SELECT e.*, row_number() OVER (PARTITION BY '
            f'"{col}", coalesce(kept, false) ORDER BY uid) AS explore_rn FROM explore e WHERE '
            f'"{col}" IN ({", ".join(str(int(i)) for i in ids)})) WHERE explore_rn <= {int(n)} '
            "ORDER BY uid", [])
        out: dict[int, dict[str, list]] = {}
        for r in rows:
            side = "kept" if r["kept"] else "dropped"
            out.setdefault(r[col], {"kept": [], "dropped": []})[side].append(r)
        return out

    def cluster_count(self) -> int:
        if self.clusters_view is None:
            return 0
        return int(self.cursor().execute(
            f'SELECT count(*) FROM "{self.clusters_view}"').fetchone()[0])
