"""The report's extra sections, counted shard by shard like the rest of the report.

- **Contact sheets**: for every (stage, reason code) the :data:`SHEET` dropped pairs with the
  smallest 64-bit uid keys (a deterministic sample: the same run shows the same pairs; each
  shard sends only its own smallest, the driver keeps the smallest overall). The commit reads
  their captions and images (download's, or the pool's) for thumbnails.
- **Aesthetic scores**: a fixed-bin histogram of every ``aesthetic`` stage's scores, all
  scored pairs and the final ones.
- **Language mix**: pairs per ``lang`` label (a ``language`` stage's, else the pool's
  column), pool and final.
- **False-drop rates**: ``audit/false_drops.parquet`` when ``curate audit --labels`` wrote it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.algorithms.uids import uid_keys
from curate.core.rundir import RunDir, step_info
from curate.stages._report_safety import SafetyView, safety_page, shard_safety
from curate.stages._report_safety import merge as merge_safety

#: thumbnails per reason code
SHEET = 8
#: aesthetic score bins (LAION's scores live in about 0-10)
AESTHETIC_EDGES = np.linspace(0.0, 10.0, 81)


def shard_extras(rd: RunDir, shard: str, decisions: dict[str, pa.Table],
                 final: pa.Array | None, aesthetic: tuple[str, ...], language: str | None,
                 clusters: tuple[tuple[str, int], ...] = (), prune: str | None = None,
                 download: str | None = None, hidden: tuple[tuple[str, str], ...] = (),
                 safety: tuple[tuple[str, str, str], ...] = ()) -> dict[str, Any]:
    """Sheet candidates (none for a ``hidden`` (stage, reason): a safety rule's drops are
    only counted), aesthetic and safety histograms, language and per-host counts."""
    out: dict[str, Any] = {"sheets": {}, "clusters": {}}
    if safety:
        out["safety"] = shard_safety(rd, shard, safety, final)
    if download:
        from curate.stages._report_hosts import shard_host_counts

        out["hosts"] = shard_host_counts(rd, download, shard)
    if clusters and prune and rd.fs.exists(rd.shard_path(prune, shard)):
        t = rd.read(prune, shard, ["uid", "cluster_id", "kept"])
        cid = pc.fill_null(t["cluster_id"], -1).to_numpy(zero_copy_only=False)
        kept = pc.fill_null(t["kept"], False).to_numpy(zero_copy_only=False)
        keys = uid_keys(t["uid"])
        uids = t["uid"].to_numpy(zero_copy_only=False)
        for label, c in clusters:
            for side, mask in (("kept", kept), ("dropped", ~kept)):
                idx = np.flatnonzero((cid == c) & mask)
                best = idx[np.argsort(keys[idx], kind="stable")[:SHEET]]
                out["clusters"][(label, side)] = [(int(keys[i]), str(uids[i]), shard)
                                                  for i in best]
    for stage, t in decisions.items():
        dropped = t.filter(pc.invert(t["kept"]))
        if not dropped.num_rows:
            continue
        keys = uid_keys(dropped["uid"])
        reason = dropped["reason"].to_numpy(zero_copy_only=False)
        uids = dropped["uid"].to_numpy(zero_copy_only=False)
        for r in np.unique(reason):
            if (stage, str(r)) in hidden:
                continue
            idx = np.flatnonzero(reason == r)
            best = idx[np.argsort(keys[idx], kind="stable")[:SHEET]]
            out["sheets"][(stage, str(r))] = [(int(keys[i]), str(uids[i]), shard) for i in best]
    for folder in aesthetic:
        if not rd.fs.exists(rd.shard_path(folder, shard)):
            continue
        a = rd.read(folder, shard, ["uid", "aesthetic_score"])
        s = a["aesthetic_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        fin = (pc.is_in(a["uid"], value_set=final).to_numpy(zero_copy_only=False)
               if final is not None else np.ones(len(s), bool))
        out.setdefault("aesthetic", {})[folder] = (
            np.histogram(np.clip(s, 0, 10), AESTHETIC_EDGES)[0],
            np.histogram(np.clip(s[fin], 0, 10), AESTHETIC_EDGES)[0])
    if language:
        src = (rd.read(language, shard, ["uid", "lang"])
               if rd.fs.exists(rd.shard_path(language, shard)) else None)
        if src is not None:
            fin = (pc.is_in(src["uid"], value_set=final) if final is not None
                   else pa.array(np.ones(src.num_rows, bool)))
            out["languages"] = {
                "pool": _value_counts(src["lang"]),
                "final": _value_counts(src.filter(fin)["lang"])}
    return out


def _value_counts(col: pa.ChunkedArray) -> dict[str, int]:
    vc = pc.value_counts(pc.fill_null(col.combine_chunks(), "(none)"))
    return {str(v["values"]): int(v["counts"]) for v in vc.to_pylist()}


class Extras:
    """The driver's sums: at most SHEET candidates per reason, histograms, label counts."""

    def __init__(self) -> None:
        self.sheets: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        self.clusters: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        self.hosts: dict[str, dict[str, int]] = {}  # O(hosts): download's per-host counts
        self.aesthetic: dict[str, list[np.ndarray]] = {}
        self.languages: dict[str, dict[str, int]] = {"pool": {}, "final": {}}
        self.safety: dict[str, dict[str, np.ndarray]] = {}  # O(stages x bins)

    def add(self, r: dict[str, Any]) -> None:
        merge_safety(self.safety, r.get("safety") or {})
        if r.get("hosts"):
            from curate.stages._report_hosts import merge

            merge(self.hosts, r["hosts"])
        for field in ("sheets", "clusters"):
            mine = getattr(self, field)
            for key, cands in r.get(field, {}).items():
                mine[key] = sorted(mine.get(key, []) + [tuple(c) for c in cands])[:SHEET]
        for folder, (all_, fin) in r.get("aesthetic", {}).items():
            acc = self.aesthetic.setdefault(folder, [np.zeros(len(AESTHETIC_EDGES) - 1,
                                                              np.int64) for _ in range(2)])
            acc[0] += all_
            acc[1] += fin
        for side, counts in r.get("languages", {}).items():
            for k, v in counts.items():
                self.languages[side][k] = self.languages[side].get(k, 0) + v


def sheets_data(rd: RunDir, sheets: dict[tuple[str, str], list], dropped: dict[tuple[str, str],
                int], image_folder: str | None, labels: dict[str, str] | None = None,
                view: SafetyView | None = None) -> list[dict[str, Any]]:
    """Per (stage, reason): its thumbnails (or captions only) and how many it dropped;
    ``labels`` replaces a uid's caption (a placeholder group's size). ``view`` leaves out
    every pair a safety rule dropped and blurs the ones that may be unsafe."""
    from curate.media.thumbs import thumbnail_uri

    labels = labels or {}
    view = view or SafetyView()
    by_shard: dict[str, set[str]] = {}
    for cands in sheets.values():
        for _, uid, shard in cands:
            by_shard.setdefault(shard, set()).add(uid)
    caption, image, verdict, faces = {}, {}, {}, {}
    for shard, uids in by_shard.items():
        verdict.update(view.verdicts(rd, shard, sorted(uids)))
        uids = {u for u in uids if verdict.get(u) != "hide"}  # never read, never shown
        if not uids:
            continue
        want = pa.array(sorted(uids), pa.string())
        faces.update(view.face_boxes(rd, shard, sorted(uids)))
        with rd.fs.open(rd.shard_path("pool", shard), "rb") as f:
            names = pq.read_schema(f).names
        pool = rd.read("pool", shard, [c for c in ("uid", "caption", "image") if c in names])
        pool = pool.filter(pc.is_in(pool["uid"], value_set=want))
        caption.update(zip(pool["uid"].to_pylist(), pool["caption"].to_pylist()))
        src = pool if "image" in pool.column_names else None
        if image_folder and rd.fs.exists(rd.shard_path(image_folder, shard)):
            with rd.fs.open(rd.shard_path(image_folder, shard), "rb") as f:
                has_image = "image" in pq.read_schema(f).names
            if has_image:
                src = rd.read(image_folder, shard, ["uid", "image"])
                src = src.filter(pc.is_in(src["uid"], value_set=want))
        if src is not None:
            image.update(zip(src["uid"].to_pylist(), src["image"].to_pylist()))
    out = []
    for (stage, reason), cands in sorted(sheets.items()):
        code = reason.split(":", 1)[0]
        out.append({"stage": stage, "reason": reason, "dropped": dropped.get((stage, code), 0),
                    "items": [{"uid": u, "caption": labels.get(u, caption.get(u, "")),
                               "thumb": thumbnail_uri(image.get(u),
                                                      blur=verdict.get(u) == "blur",
                                                      faces=faces.get(u)),
                               "blurred": verdict.get(u) == "blur"}
                              for _, u, _ in cands if verdict.get(u) != "hide"]})
    return out


def false_drops(rd: RunDir) -> pa.Table | None:
    path = rd.path("audit", "false_drops.parquet")
    if not rd.fs.exists(path):
        return None
    with rd.fs.open(path, "rb") as f:
        return pq.read_table(f)


def extras_plan(rd: RunDir, before: list, ran: dict[str, bool]) -> dict[str, Any]:
    """What the count step reads for the extra sections (recorded in the report's plan):
    the largest, most and least complex prune clusters get kept/dropped sheets."""
    prune = next((r for r in before if r.kind == "prune" and ran.get(r.name)), None)
    chosen: list[list] = []
    c = read_clusters(rd, prune)
    if c is not None and c.num_rows:
        ids, size = c["cluster_id"].to_pylist(), c["size"].to_pylist()
        chosen.append(["largest", ids[int(np.argmax(size))]])
        if "complexity" in c.column_names and c["complexity"].null_count < c.num_rows:
            cx = c["complexity"].to_numpy(zero_copy_only=False).astype(float)  # null: NaN
            valid = np.flatnonzero(~np.isnan(cx) & (np.asarray(size) > 0))
            if valid.size:
                chosen.append(["most complex", ids[int(valid[np.argmax(cx[valid])])]])
                chosen.append(["least complex", ids[int(valid[np.argmin(cx[valid])])]])
    return {"aesthetic": [[r.name, r.folder] for r in before
                          if r.kind == "aesthetic" and ran.get(r.name)],
            "language": next((r.folder for r in before
                              if r.kind == "language" and ran.get(r.name)), None),
            "sheet_clusters": chosen, "prune": prune.folder if prune else None,
            "download": next((r.folder for r in before
                              if r.kind == "download" and ran.get(r.name)), None)}


def page_extras(rd: RunDir, totals: Any, plan: dict[str, Any], manifest: dict[str, Any],
                before: list, pipeline: Any, out_folder: str = "reports") -> dict[str, Any]:
    """ReportData's extra fields from the count step's sums; writes host_failures.parquet
    when download ran."""
    hosts: list[dict[str, Any]] = []
    if totals.extras.hosts:
        from curate.stages._report_hosts import top_failing_hosts, write_host_failures

        table = write_host_failures(rd, f"{out_folder}/host_failures.parquet",
                                    totals.extras.hosts)
        hosts = top_failing_hosts(table, 20)
    dropped = {(s, r): n for s, c in totals.stages.items() for r, n in c["dropped"].items()}
    images = next((r.folder for r in before if r.kind == "download"), None)
    aesthetic = {}
    for name, folder in plan.get("aesthetic", []):
        if folder in totals.extras.aesthetic:
            all_, fin = totals.extras.aesthetic[folder]
            info = step_info(manifest.get("stages", {}).get(name), "head")
            aesthetic[name] = {"edges": AESTHETIC_EDGES, "all": all_, "final": fin,
                               "warning": info.get("warning")}
    sheets, labels, contamination = dict(totals.extras.sheets), {}, {}
    for r in before:  # what image_dedup and decontaminate recorded in run.json
        rec = manifest.get("stages", {}).get(r.name)
        info = step_info(rec, "dedup" if r.kind == "image_dedup" else "hits")
        if r.kind == "image_dedup" and info.get("groups"):
            sheets[(r.name, "placeholder_image: the largest groups")] = [
                (i, g[2], g[3]) for i, g in enumerate(info["groups"])]
            labels.update({g[2]: f"{g[0]:,} pairs from {g[1]:,} hosts"
                           for g in info["groups"]})
        if r.kind == "decontaminate" and info.get("hits") is not None:
            contamination[r.name] = info["hits"]
    langs = dict(totals.extras.languages)
    bal = next((r for r in before if r.kind == "balance"), None)
    if bal is not None:
        langs["head_tail"] = language_head_tail(rd, bal.folder)
        # languages without a list of their own (MetaCLIP 2: matched against `other`)
        langs["to_other"] = step_info(manifest.get("stages", {}).get(bal.name),
                                      "count").get("to_other") or {}
    by_cluster = dict(plan.get("sheet_clusters") or [])
    view = SafetyView.from_plan(plan)
    side = sheets_data(rd, totals.extras.clusters, {}, images, view=view)
    cluster_sheets = [{"label": label, "cluster": by_cluster.get(label),
                       "kept": next((s["items"] for s in side if s["stage"] == label
                                     and s["reason"] == "kept"), []),
                       "dropped": next((s["items"] for s in side if s["stage"] == label
                                        and s["reason"] == "dropped"), [])}
                      for label in by_cluster]
    withheld = [{"stage": s, "reason": c, "dropped": n, "items": [], "withheld": True}
                for (s, c), n in sorted(dropped.items()) if (s, c) in view.hidden_sheets()]
    return {"cluster_sheets": cluster_sheets, "hosts": hosts,
            "sheets": sheets_data(rd, sheets, dropped, images, labels, view) + withheld,
            "safety": safety_page(totals.extras.safety, plan, manifest, before, pipeline,
                                  dropped),
            "aesthetic": aesthetic, "languages": langs, "false_drops": false_drops(rd),
            "contamination": contamination}


def language_head_tail(rd: RunDir, folder: str) -> list[dict[str, Any]]:
    """MetaCLIP 2: per language its t, tail fraction, matched and head entries (count > t),
    from balance's entry_counts and language_t files (O(vocabulary), no pair is read)."""
    lt_path, ec_path = rd.path(folder, "language_t.parquet"), rd.path(folder,
                                                                      "entry_counts.parquet")
    if not (rd.fs.exists(lt_path) and rd.fs.exists(ec_path)):
        return []
    with rd.fs.open(lt_path, "rb") as f:
        lt = pq.read_table(f)
    if "lang" not in lt.column_names or not pc.any(pc.is_valid(lt["lang"])).as_py():
        return []  # one vocabulary: nothing per language
    with rd.fs.open(ec_path, "rb") as f:
        ec = pq.read_table(f, columns=["lang", "count"])
    t = pc.take(lt["t"], pc.index_in(ec["lang"], value_set=lt["lang"]))
    ec = ec.append_column("head", pc.fill_null(pc.greater(ec["count"], t), False)).append_column(
        "matched", pc.greater(ec["count"], 0))
    g = ec.group_by("lang").aggregate([("head", "sum"), ("matched", "sum")])
    by = {r["lang"]: r for r in g.to_pylist()}
    return [{"lang": r["lang"], "t": r["t"], "tail_fraction": r["tail_fraction"],
             "matched": int(by.get(r["lang"], {}).get("matched_sum") or 0),
             "head": int(by.get(r["lang"], {}).get("head_sum") or 0)}
            for r in lt.to_pylist()]


def read_clusters(rd: RunDir, prune: Any) -> pa.Table | None:
    """prune's clusters.parquet (None when prune did not run or wrote none)."""
    if prune is None or not rd.fs.exists(rd.path(prune.folder, "clusters.parquet")):
        return None
    with rd.fs.open(rd.path(prune.folder, "clusters.parquet"), "rb") as f:
        return pq.read_table(f)
