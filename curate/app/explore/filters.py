"""What a page's or the API's filter asks for, turned into a DuckDB ``WHERE`` clause.

Every value a person types goes in as a query parameter, never pasted into the SQL; column
names are checked against the columns the ``explore`` view really has. The one exception is
``where``, an SQL condition written by the person running the app (it is their machine and
their run): it is checked to be a single condition on the ``explore`` view — one ``SELECT``
over that view alone, no set operation that could bring in rows from elsewhere (the rows a
safety rule dropped), no ``;`` second statement — with DuckDB's own parser
(``json_serialize_sql``), then pasted in parentheses.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from curate.errors import InputError

#: columns whose value is a number a range filter applies to (when the view has them)
RANGE_TYPES = ("FLOAT", "DOUBLE", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT",
               "DECIMAL")
#: filter keys of the query string (everything else is the search's or the page's)
KEYS = ("kept", "dropped_by", "reason", "detail", "caption", "lang", "cluster", "where",
        "order", "desc")


class Filters(BaseModel):
    """A filter over the ``explore`` view (one row per visible pool pair)."""

    model_config = ConfigDict(extra="forbid")

    kept: Literal["any", "kept", "dropped"] = "any"
    dropped_by: str | None = None
    reason: str | None = None
    detail: str | None = Field(None, description="substring of the drop's detail")
    caption: str | None = Field(None, description="substring of the caption (any case)")
    lang: str | None = None
    cluster: int | None = None
    #: column -> (min, max), either may be None
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    where: str | None = Field(None, description="an SQL condition over the explore view")
    order: str | None = None
    desc: bool = False

    @classmethod
    def from_query(cls, q: Any) -> Filters:
        """From a query string (or form): ``min_<col>`` / ``max_<col>`` are ranges; empty
        values mean "no filter"."""
        raw: dict[str, Any] = {}
        ranges: dict[str, list[float | None]] = {}
        for key in q.keys():
            value = str(q.get(key)).strip()
            if value == "":
                continue
            if key.startswith(("min_", "max_")):
                try:
                    num = float(value)
                except ValueError:
                    raise InputError(f"{key}: {value!r} is not a number") from None
                ranges.setdefault(key[4:], [None, None])[key.startswith("max_")] = num
            elif key in KEYS:
                raw[key] = value
        if "cluster" in raw:
            try:
                raw["cluster"] = int(raw["cluster"])
            except ValueError:
                raise InputError(f"cluster: {raw['cluster']!r} is not a cluster id") from None
        if "desc" in raw:
            raw["desc"] = raw["desc"].lower() in ("1", "true", "yes", "on")
        try:
            return cls(**raw, ranges={k: (a, b) for k, (a, b) in ranges.items()})
        except ValueError as err:
            first = err.errors()[0] if hasattr(err, "errors") else {"msg": str(err)}
            where = ".".join(str(x) for x in first.get("loc", ())) or "filter"
            raise InputError(f"{where}: {first['msg']}") from None

    def active(self) -> bool:
        return self != Filters(order=self.order, desc=self.desc)

    def query(self) -> dict[str, str]:
        """The query-string form of this filter (what links and exports carry)."""
        out: dict[str, str] = {}
        for key in KEYS:
            v = getattr(self, key)
            if v is None or v == "any" or v is False:
                continue
            out[key] = "1" if v is True else str(v)
        for col, (lo, hi) in self.ranges.items():
            if lo is not None:
                out[f"min_{col}"] = f"{lo:g}"
            if hi is not None:
                out[f"max_{col}"] = f"{hi:g}"
        return out

    def sql(self, columns: dict[str, str], con: Any) -> tuple[str, list[Any]]:
        """(``WHERE`` body, parameters) over the explore view whose columns (name -> DuckDB
        type) are ``columns``; ``TRUE`` when nothing is asked."""
        parts: list[str] = []
        params: list[Any] = []

        def need(col: str, what: str) -> str:
            if col not in columns:
                raise InputError(f"{what}: this run has no column {col!r} "
                                 f"(it has {', '.join(sorted(columns))})")
            return f'"{col}"'

        if self.kept != "any":
            parts.append("kept" if self.kept == "kept" else "NOT coalesce(kept, false)")
        for key in ("dropped_by", "reason", "lang"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{need(key, key)} = ?")
                params.append(value)
        for key in ("detail", "caption"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{need(key, key)} ILIKE ?")
                params.append(f"%{value}%")
        if self.cluster is not None:
            parts.append(f"{need('cluster_id', 'cluster')} = ?")
            params.append(self.cluster)
        for col, (lo, hi) in sorted(self.ranges.items()):
            name = need(col, f"min_/max_{col}")
            if not is_number(columns[col]):
                raise InputError(f"min_/max_{col}: {col} is {columns[col]}, not a number")
            if lo is not None:
                parts.append(f"{name} >= ?")
                params.append(lo)
            if hi is not None:
                parts.append(f"{name} <= ?")
                params.append(hi)
        if self.where:
            parts.append(f"({checked_where(self.where, con)})")
        return (" AND ".join(parts) or "TRUE"), params

    def order_sql(self, columns: dict[str, str]) -> str:
        if self.order is None:
            return "uid"
        if self.order not in columns:
            raise InputError(f"order: no column {self.order!r} (it has "
                             f"{', '.join(sorted(columns))})")
        return f'"{self.order}" {"DESC" if self.desc else "ASC"} NULLS LAST, uid'


def is_number(duckdb_type: str) -> bool:
    """A scalar number column (``INTEGER[]`` is a list, not a number)."""
    return duckdb_type.startswith(RANGE_TYPES) and not duckdb_type.endswith("]")


def checked_where(where: str, con: Any) -> str:
    """``where`` if it is one condition on the explore view, else InputError (one line)."""
    sql = f"SELECT * FROM explore WHERE ({where})"
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if tree.get("error"):
        msg = str(tree.get("error_message") or "does not parse").splitlines()[0]
        raise InputError(f"where: {msg}")
    stmts = tree.get("statements") or []
    node = stmts[0].get("node", {}) if len(stmts) == 1 else {}
    ok = (node.get("type") == "SELECT_NODE"
          and (node.get("from_table") or {}).get("table_name") == "explore"
          and not node.get("modifiers") and not node.get("group_expressions")
          and node.get("having") is None)
    if not ok:
        raise InputError("where: give one condition on the row's columns (no ';', UNION, "
                         "GROUP BY, ORDER BY or LIMIT)")
    return where
