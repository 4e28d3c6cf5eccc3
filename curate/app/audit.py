"""``curate audit``: how often does a filter drop a good pair?

``sample`` draws ``n`` pairs a reason code dropped, deterministically (the ``n`` smallest
64-bit uid keys: the same run gives the same sample, and a larger ``n`` extends it), and
writes a labelling page: thumbnails and captions, keys to label each drop right or wrong,
the labels saved as a CSV by the browser (the page is one self-contained file: its script is
inline, it fetches nothing). ``estimate`` reads such CSVs and gives each reason's false-drop
rate with a Wilson score interval (Wilson 1927), written to ``audit/false_drops.parquet``
where the report finds it.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
import pyarrow as pa

from curate.algorithms.intervals import wilson
from curate.algorithms.uids import uid_keys
from curate.core.io import write_parquet_atomic
from curate.core.rundir import RunDir
from curate.errors import CurateError, InputError

LABELS = ("bad", "good")  # bad: the filter was right to drop it; good: a false drop
THUMB = 160


def sample(run: str, reason: str, n: int) -> list[dict[str, Any]]:
    """The n dropped pairs of ``reason`` with the smallest uid keys: uid, stage, detail,
    caption and a thumbnail ``data:`` URI (None without images)."""
    from curate.app.query import _q, connect
    from curate.media.thumbs import thumbnail_uri

    con = connect(run)
    known = {r[0] for r in con.execute(
        "SELECT DISTINCT reason FROM decisions WHERE reason IS NOT NULL").fetchall()}
    if reason not in known:
        raise CurateError(f"{run}: no pair was dropped with reason {reason!r}; reasons: "
                          f"{', '.join(sorted(known)) or 'none'}")
    best = None  # the n smallest keys so far (a small table: n rows at most)
    q = "SELECT uid, dropped_by, detail FROM decisions WHERE reason = " + _q(reason)
    reader = con.cursor().sql(q).to_arrow_reader(65_536)  # its own cursor: streams
    for batch in reader:
        t = pa.Table.from_batches([batch]).rename_columns(["uid", "stage", "detail"])
        t = t.append_column("key", pa.array(uid_keys(t["uid"]), pa.uint64()))
        t = pa.concat_tables([best, t]) if best is not None else t
        keys = t["key"].to_numpy()
        if len(keys) > n:
            t = t.take(pa.array(np.argpartition(keys, n - 1)[:n]))
        best = t
    best = best.sort_by("key")
    items = list(zip(best["key"].to_pylist(), best["uid"].to_pylist(),
                     best["stage"].to_pylist(), best["detail"].to_pylist()))
    uids = best["uid"].combine_chunks()
    captions = _column(con, "pool", "caption", uids)
    from curate.stages.registry import recorded_pipeline

    pipe = recorded_pipeline(run)  # once: which rules are safety rules, where faces are
    verdict = _safety(con, pipe, reason, items)
    shown = pa.array([u for _, u, _, _ in items if verdict.get(u) != "hide"], pa.string())
    images: dict[str, Any] = {}
    faces = _faces(con, pipe, shown) if len(shown) else {}
    if len(shown):  # download's images, else the pool's own (a pool that brings bytes)
        source = "images" if _has_view(con, "images") else "pool"
        if _has_column(con, source, "image"):
            images = _column(con, source, "image", shown)
    return [{"uid": u, "stage": st, "detail": d or "", "caption": captions.get(u, ""),
             "thumb": thumbnail_uri(images.get(u), THUMB, blur=verdict.get(u) == "blur",
                                    faces=faces.get(u)),
             "blurred": verdict.get(u) == "blur", "withheld": verdict.get(u) == "hide"}
            for _, u, st, d in items]


def _safety(con: Any, pipe: Any, reason: str, items: list[tuple]) -> dict[str, str]:
    """uid -> ``"hide"`` (a safety rule dropped it: never a picture) or ``"blur"`` (punsafe
    above the line, or not NSFW-scored in a run with an nsfw stage, unless
    ``report.show_sensitive``), as the report decides (:mod:`curate.stages._report_safety`)."""
    from curate.stages._report_safety import blur_unsafe

    sensitive = pipe.sensitive()
    out = {u: "hide" for _, u, st, _ in items if (st, reason) in sensitive}
    views = [r.view for r in pipe.refs() if r.kind == "nsfw"]
    if not views or pipe.section("report").show_sensitive:
        return out
    uids = pa.array([u for _, u, _, _ in items], pa.string())
    scores = [_column(con, view, "punsafe", uids).items() for view in views
              if _has_view(con, view)]
    return blur_unsafe(out, uids.to_pylist(), scores)


def _faces(con: Any, pipe: Any, uids: pa.Array) -> dict[str, Any]:
    """uid -> face boxes to blur in its thumbnail: the pool's ``face_bboxes``, overridden
    by each faces stage's (as :func:`curate.stages._emit_faces.face_boxes` reads them)."""
    views = ["pool"] + [r.view for r in pipe.refs() if r.kind == "faces"]
    out: dict[str, Any] = {}
    for view in views:
        if _has_view(con, view) and _has_column(con, view, "face_bboxes"):
            for u, b in _column(con, view, "face_bboxes", uids).items():
                if view != "pool" or b is not None:
                    out[u] = b
    return out


def _has_view(con: Any, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE "
                            "table_name = ?", [name]).fetchall()[0][0])


def _has_column(con: Any, view: str, col: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE "
                            "table_name = ? AND column_name = ?", [view, col]).fetchall()[0][0])


def _column(con: Any, view: str, col: str, uids: pa.Array) -> dict[str, Any]:
    con.register("audit_uids", pa.table({"uid": uids}))
    rows = con.execute(f'SELECT v.uid, v."{col}" FROM "{view}" v JOIN audit_uids USING (uid)'
                       ).fetchall()
    con.unregister("audit_uids")
    return dict(rows)


def page(run: str, reason: str, items: list[dict[str, Any]]) -> str:
    from curate.report.html import _environment

    return _environment().get_template("audit.html").render(run=run, reason=reason,
                                                            items=items)


def estimate(run: str, label_files: list[str]) -> pa.Table:
    """Per reason: labelled drops, false drops, the rate and its 95% Wilson interval."""
    counts: dict[str, list[int]] = {}
    seen: set[tuple[str, str]] = set()
    for path in label_files:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as err:
            raise InputError(f"{path}: {err.strerror}") from None
        for i, r in enumerate(rows, start=2):
            if not {"uid", "reason", "label"} <= set(r):
                raise InputError(f"{path}: expected columns uid,reason,label")
            if r["label"] not in LABELS:
                raise InputError(f"{path}: line {i}: label {r['label']!r}: expected "
                                 f"{' or '.join(LABELS)}")
            if (r["uid"], r["reason"]) in seen:  # a pair labelled twice counts once
                continue
            seen.add((r["uid"], r["reason"]))
            c = counts.setdefault(r["reason"], [0, 0])
            c[0] += 1
            c[1] += r["label"] == "good"
    reasons = sorted(counts)
    n = np.array([counts[r][0] for r in reasons], np.int64)
    k = np.array([counts[r][1] for r in reasons], np.int64)
    lo_hi = [wilson(int(a), int(b)) for a, b in zip(k, n)]
    table = pa.table({"reason": pa.array(reasons, pa.string()), "labelled": n,
                      "false_drops": k, "rate": k / np.maximum(n, 1),
                      "ci_low": [x[0] for x in lo_hi], "ci_high": [x[1] for x in lo_hi]})
    rd = RunDir(run)
    write_parquet_atomic(rd.fs, rd.path("audit", "false_drops.parquet"), table)
    return table
