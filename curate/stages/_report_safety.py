"""What the report (and ``curate audit``) shows of the safety stages, and what it never shows.

- **Never a picture**: a pair that a safety rule dropped — a reason code a stage declares
  ``sensitive`` (download's ``denylisted``, hash lists included; nsfw's ``nsfw`` and
  ``violent``; toxicity's ``toxic``; a classifier unless it says it is not a safety head) —
  has no thumbnail on any page, and no caption on the report: its contact sheet is a count
  (``curate audit`` shows its caption, to be labelled, never its image). Candidates for
  such sheets are never even collected (:func:`curate.stages._report_extras.shard_extras`),
  and every thumbnail a page is about to show is checked again against every safety stage's
  decisions (:meth:`SafetyView.verdicts`), whatever sheet it is on (a prune cluster's kept
  pairs may be what a later nsfw stage dropped).
- **Blurred**: a thumbnail of any other pair whose ``punsafe`` (any nsfw stage) is above
  :data:`BLUR_ABOVE`, or that no nsfw stage scored in a run that has one (a pair dropped
  before the nsfw stage was never scored: unknown is treated as unsafe) — unless
  ``report.show_sensitive: true``, which never brings back a hidden pair.
- **Faces blurred**: every thumbnail of a pair with face boxes (a faces stage's, or the
  pool's ``face_bboxes``) has them blurred at full size first, as the curated image is
  (:meth:`SafetyView.face_boxes`; :mod:`curate.media.blur`), whatever ``show_sensitive`` says.
- **Counted**: punsafe and ptoxic histograms of every scored pair and of the final ones, the
  violence flag's rate, and the denylist's drops per list kind (from run.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core.rundir import RunDir, step_info
from curate.stages._emit_faces import face_boxes, face_folders

#: thumbnails of pairs with punsafe above this are blurred (LAION-5B's "unsafe" line)
BLUR_ABOVE = 0.5
#: punsafe / ptoxic histogram bins
SAFETY_EDGES = np.linspace(0.0, 1.0, 51)
#: the score column of each scoring safety kind
COLUMNS = {"nsfw": "punsafe", "toxicity": "ptoxic"}


@dataclass(frozen=True)
class SafetyView:
    """Which thumbnails a page may show: hidden, blurred or plain."""

    #: (stage instance, folder, sensitive reason codes) of every safety rule in the run
    hide: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    #: folders of every nsfw stage in the run (scored pairs have a punsafe there)
    nsfw: tuple[str, ...] = ()
    show_sensitive: bool = False
    #: folders of every faces stage in the run (face boxes; the pool's are found too)
    faces: tuple[str, ...] = ()

    @classmethod
    def of(cls, pipeline: Any, refs: list[Any], show_sensitive: bool = False) -> SafetyView:
        sensitive = pipeline.sensitive()
        hide = []
        for r in refs:
            codes = tuple(sorted(c for n, c in sensitive if n == r.name))
            if codes:
                hide.append((r.name, r.folder, codes))
        return cls(tuple(hide), tuple(r.folder for r in refs if r.kind == "nsfw"),
                   show_sensitive, face_folders(refs))

    @classmethod
    def from_plan(cls, plan: dict[str, Any]) -> SafetyView:
        s = plan.get("safety_view") or {}
        return cls(tuple((a, b, tuple(c)) for a, b, c in s.get("hide", [])),
                   tuple(s.get("nsfw", [])), bool(s.get("show_sensitive")),
                   tuple(s.get("faces", [])))

    def to_plan(self) -> dict[str, Any]:
        return {"hide": [[a, b, list(c)] for a, b, c in self.hide], "nsfw": list(self.nsfw),
                "show_sensitive": self.show_sensitive, "faces": list(self.faces)}

    def hidden_sheets(self) -> set[tuple[str, str]]:
        return {(name, code) for name, _, codes in self.hide for code in codes}

    def face_boxes(self, rd: RunDir, shard: str, uids: list[str]) -> dict[str, list]:
        """uid -> face boxes to blur in its thumbnail (pairs with none are absent)."""
        return face_boxes(rd, shard, uids, self.faces)

    def verdicts(self, rd: RunDir, shard: str, uids: list[str]) -> dict[str, str]:
        """uid -> ``"hide"`` or ``"blur"`` for the pairs of one pool shard; absent: show."""
        if not uids:
            return {}
        want = pa.array(sorted(set(uids)), pa.string())
        out: dict[str, str] = {}
        for _, folder, codes in self.hide:
            if not rd.fs.exists(rd.shard_path(folder, shard)):
                continue
            t = rd.read(folder, shard, ["uid", "kept", "reason"])
            t = t.filter(pc.is_in(t["uid"], value_set=want))
            gone = pc.and_(pc.invert(pc.fill_null(t["kept"], False)),
                           pc.is_in(t["reason"], value_set=pa.array(codes, pa.string())))
            out.update(dict.fromkeys(t.filter(pc.fill_null(gone, False))["uid"].to_pylist(),
                                     "hide"))
        if not self.nsfw or self.show_sensitive:
            return out
        scores = []
        for folder in self.nsfw:
            if rd.fs.exists(rd.shard_path(folder, shard)):
                t = rd.read(folder, shard, ["uid", "punsafe"])
                t = t.filter(pc.is_in(t["uid"], value_set=want))
                scores.append(zip(t["uid"].to_pylist(), t["punsafe"].to_pylist()))
        return blur_unsafe(out, want.to_pylist(), scores)


def blur_unsafe(out: dict[str, str], uids: list[str], scores: list) -> dict[str, str]:
    """Mark ``"blur"`` every uid not already hidden whose worst punsafe over ``scores``
    (``(uid, punsafe)`` pairs of each nsfw stage) is above :data:`BLUR_ABOVE`, or that no
    nsfw stage scored: unknown counts as unsafe. The report's and the audit's one rule."""
    worst: dict[str, float] = {}
    for pairs in scores:
        for u, p in pairs:
            if p is not None:
                worst[u] = max(worst.get(u, 0.0), float(p))
    for u in uids:
        if out.get(u) != "hide" and (u not in worst or worst[u] > BLUR_ABOVE):
            out[u] = "blur"
    return out


def safety_plan(refs: list[Any], ran: dict[str, bool]) -> list[list[str]]:
    """(instance, folder, kind) of the nsfw and toxicity stages that ran: their histograms."""
    return [[r.name, r.folder, r.kind] for r in refs if r.kind in COLUMNS and ran.get(r.name)]


def shard_safety(rd: RunDir, shard: str, scored: tuple[tuple[str, str, str], ...],
                 final: pa.Array | None) -> dict[str, Any]:
    """Per safety stage: score histograms (all scored pairs, final) and violence counts."""
    out: dict[str, Any] = {}
    for name, folder, kind in scored:
        if not rd.fs.exists(rd.shard_path(folder, shard)):
            continue
        col = COLUMNS[kind]
        t = rd.read(folder, shard, ["uid", col] + (["violent"] if kind == "nsfw" else []))
        s = pc.fill_null(t[col], 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        fin = (pc.is_in(t["uid"], value_set=final).to_numpy(zero_copy_only=False)
               if final is not None else np.ones(len(s), bool))
        r = {"all": np.histogram(np.clip(s, 0, 1), SAFETY_EDGES)[0],
             "final": np.histogram(np.clip(s[fin], 0, 1), SAFETY_EDGES)[0]}
        if kind == "nsfw":
            # [flagged, flagged and final, pairs with a flag, final pairs with a flag]
            known = pc.is_valid(t["violent"]).to_numpy(zero_copy_only=False)
            flagged = pc.fill_null(t["violent"], False).to_numpy(zero_copy_only=False)
            r["violent"] = np.array([flagged.sum(), flagged[fin].sum(), known.sum(),
                                     known[fin].sum()], np.int64)
        out[name] = r
    return out


def merge(acc: dict[str, dict[str, np.ndarray]], r: dict[str, Any]) -> None:
    """Add one shard's :func:`shard_safety` to the driver's sums (O(stages x bins))."""
    for name, parts in (r or {}).items():
        mine = acc.setdefault(name, {})
        for k, v in parts.items():
            mine[k] = mine[k] + v if k in mine else np.array(v, np.int64)


def list_counts(manifest: dict[str, Any], refs: list[Any]) -> dict[str, dict[str, int]]:
    """download instance -> {list kind: pairs its denylist dropped}, as run.json recorded
    them (``stages.<name>.by_detail.denylisted``)."""
    out = {}
    for r in refs:
        if r.kind != "download":
            continue
        st = manifest.get("stages", {}).get(r.name, {})
        counts = (st.get("by_detail") or {}).get("denylisted") or {}
        if counts:
            out[r.name] = {str(k): int(v) for k, v in sorted(counts.items())}
    return out


def safety_page(sums: dict[str, dict[str, np.ndarray]], plan: dict[str, Any],
                manifest: dict[str, Any], refs: list[Any], pipeline: Any,
                dropped: dict[tuple[str, str], int]) -> dict[str, Any]:
    """ReportData.safety: what the safety section shows (numbers only, never a picture)."""
    stages = []
    for name, _folder, kind in plan.get("safety", []):
        h = sums.get(name)
        if h is None:
            continue
        info = step_info(manifest.get("stages", {}).get(name), "head")
        sec = pipeline.section(name)
        cut = getattr(sec, "max_punsafe", None) if kind == "nsfw" else getattr(
            sec, "max_ptoxic", None)
        stages.append({"name": name, "kind": kind, "column": COLUMNS[kind],
                       "edges": SAFETY_EDGES, "all": h["all"], "final": h["final"],
                       "violent": h.get("violent"), "threshold": cut, "info": info,
                       "dropped": {c: n for (s, c), n in dropped.items() if s == name}})
    view = SafetyView.from_plan(plan)
    withheld = [{"stage": s, "reason": c, "dropped": n}
                for (s, c), n in sorted(dropped.items()) if (s, c) in view.hidden_sheets()
                and n]
    return {"stages": stages, "lists": list_counts(manifest, refs), "withheld": withheld,
            "blur_above": BLUR_ABOVE, "show_sensitive": view.show_sensitive,
            "blurs": bool(view.nsfw) and not view.show_sensitive}
