"""The report page rendered from hand-made ReportData (no run directory, no Ray).

The templates are autoescaped and strict (a name they use but are not given is an error), so
rendering every section with and without its optional parts checks both the markup and the
data the Python side hands over. Stage names and drop reasons are arbitrary strings here, as
they will be once stages are instances (``score_b32``) and reasons are stable codes.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from curate.report.data import SECTIONS, ReportData
from curate.report.html import render

SUMMARY_SCHEMA = pa.schema([
    ("stage", pa.string()), ("step", pa.int32()), ("status", pa.string()),
    ("seconds", pa.float64()), ("pairs_in", pa.int64()), ("kept", pa.int64()),
    ("dropped", pa.int64()), ("reason", pa.string()), ("count", pa.int64())])


def summary(stages: list[tuple[str, int, int, dict[str, int]]]) -> pa.Table:
    """stage_summary rows: (stage, pairs in, kept, {reason: count}) per stage, in order."""
    rows = []
    for step, (name, pairs_in, kept, reasons) in enumerate(stages):
        rows.append({"stage": name, "step": step, "status": "done", "seconds": 1.25,
                     "pairs_in": pairs_in, "kept": kept, "dropped": pairs_in - kept,
                     "reason": None, "count": None})
        rows += [{"stage": name, "step": step, "status": None, "seconds": None,
                  "pairs_in": None, "kept": None, "dropped": None, "reason": r, "count": n}
                 for r, n in reasons.items()]
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)


def concepts(entries: list[str]) -> pa.Table:
    n = len(entries)
    pool = np.arange(n, 0, -1, dtype=np.int64) * 3
    return pa.table({
        "entry_id": pa.array(range(n), pa.int32()), "entry": pa.array(entries, pa.string()),
        "count_pool": pool, "count_after_balance": pool // 2, "count_final": pool // 3,
        "rank": pa.array(range(1, n + 1), pa.int64()), "head": pa.array(pool > 6, pa.bool_())})


def coverage(names: list[str], pool: list[int], final: list[int]) -> pa.Table:
    order = np.argsort(-np.asarray(final), kind="stable")
    rank = np.empty(len(names), np.int64)
    rank[order] = np.arange(1, len(names) + 1)
    return pa.table({"class_index": pa.array(range(len(names)), pa.int32()), "classname": names,
                     "count_pool": pa.array(pool, pa.int64()),
                     "count_final": pa.array(final, pa.int64()), "rank_final": rank})


def scores(n: int = 50) -> dict:
    edges = np.linspace(-1, 1, 401)
    allc = np.zeros(400, np.int64)
    allc[220:240] = n // 20
    kept = allc.copy()
    kept[220:225] = 0
    return {"edges": edges, "all": allc, "kept": kept, "threshold": 0.1,
            "threshold_label": "score.filter.min_score = 0.1", "n": int(allc.sum()),
            "sum": float(allc.sum()) * 0.15, "n_kept": int(kept.sum())}


def clusters(with_dbp: bool = True) -> pa.Table:
    cols = {"cluster_id": pa.array(range(4), pa.int32()), "size": [40, 12, 7, 3]}
    if with_dbp:
        cols |= {"size_after_dedup": [35, 10, 7, 3], "complexity": [0.1, 0.4, 0.2, 0.3],
                 "quota": [20, 10, 7, 3]}
    return pa.table(cols)


STAGES = ["download", "score", "match", "balance", "prune", "report"]


def full(**over) -> ReportData:
    """A run in which every stage ran and every section has something to show."""
    data = dict(
        run_url="/runs/r1", generated="2026-01-01T00:00:00+00:00", stages=list(STAGES),
        ran={s: True for s in STAGES},
        stage_summary=summary([("ingest", 100, 98, {"duplicate": 2}),
                               ("download", 98, 90, {"download_failed": 8}),
                               ("score", 90, 80, {"below_min_score": 10}),
                               ("match", 80, 80, {}),
                               ("balance", 80, 60, {"not_sampled": 15, "no_metadata_match": 5}),
                               ("prune", 60, 50, {"semantic_duplicate": 6,
                                                  "over_cluster_quota": 4})]),
        config={"stages": STAGES, "report": {"top_n": 5}}, versions={"curate": "0.1.0"},
        pool={"rows": 98}, top_n=5, notes=["a note"],
        concepts=concepts(["dog", "cat", "red car", "tree", "kite", "sky", "umbrella"]),
        concept_columns={"count_pool": "pool", "count_after_balance": "after balance",
                         "count_final": "final"},
        t=6, balance_ran=True, scores=scores(), clusters=clusters(),
        coverage=coverage(["goldfish", "tabby cat", "tench", "crane"], [9, 4, 0, 2],
                          [5, 0, 0, 1]),
        coverage_note="four classes only", final_pairs=50)
    data.update(over)
    return ReportData(**data)


def section(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    assert not re.search(r"""(src|href)\s*=\s*[^"'\s]""", page)
    assert "<script" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page
    for sid, _ in SECTIONS:
        assert page.count(f'<section id="{sid}">') == 1, sid
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_full_page():
    page = render(full())
    assert_self_contained(page)
    # funnel, rank-frequency, head/tail, scores, clusters, coverage
    assert page.count('src="data:image/png;base64,') == 6
    assert "not run" not in page
    top = section(page, "top-entries")
    assert "dog" in top and '<span class="head-flag">head</span>' in top
    assert "Top 5 most frequent" in top
    assert "goldfish" in section(page, "imagenet")
    assert "Lost by curation" in page and "tabby cat (4)" in page
    assert "No pair even in the pool" in page and "tench" in page
    assert "top_n: 5" in section(page, "config") and "curate 0.1.0" in page
    assert "a note" in section(page, "overview")
    assert 'id="random-weights-warning"' not in page


def test_autoescape():
    evil = "<script>alert(1)</script>"
    d = full(run_url=f"s3://bucket/{evil}", stages=[f"{evil}stage", "report"],
             ran={f"{evil}stage": True, "report": True},
             stage_summary=summary([(f"{evil}stage", 10, 5, {f"{evil}reason": 5})]),
             notes=[f"note {evil}"], concepts=concepts([f"entry {evil}", "dog"]),
             coverage=coverage([f"class {evil}", "tench"], [3, 0], [0, 0]),
             config={"vocab": f"https://example.org/{evil}"}, final_label=f"final {evil}",
             random_weights=True)
    page = render(d)
    assert_self_contained(page)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for where in ("funnel", "top-entries", "imagenet", "config", "overview"):
        assert "&lt;script&gt;" in section(page, where), where
    assert "s3&#58;//bucket/" in page and "https&#58;//example.org/" in page


def test_quotes_in_attributes_escaped():
    # alt texts and hrefs are fixed; a quote in data never reaches an attribute unescaped
    page = render(full(stages=['a"b', "report"], ran={'a"b': True, "report": True}))
    assert 'a"b' not in page and "a&#34;b" in page


def test_arbitrary_stage_names_and_reason_codes():
    reasons = {"ingest": {}, "download": {"download_failed": 5},
               "lang_en": {"caption_too_short": 7, "some_future_code": 1},
               "score_b32": {"below_top_fraction": 20}, "score_l14": {"below_top_fraction": 4},
               "dedup_exact": {"semantic_duplicate": 3, "exact_duplicate": 9},
               "balance_v2": {"not_sampled": 30, "no_metadata_match": 12},
               "prune_q": {"over_cluster_quota": 6}}
    rows, n = [], 1000
    for name, r in reasons.items():
        rows.append((name, n, n - sum(r.values()), r))
        n -= sum(r.values())
    stages = [*list(reasons)[1:], "report"]
    d = full(stages=stages, ran={s: True for s in stages}, stage_summary=summary(rows))
    funnel = section(render(d), "funnel")
    shown: dict[str, list[tuple[str, int]]] = {}
    for cls, row in re.findall(r'<tr class="(total|reason)">(.*?)</tr>', funnel, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        if cls == "total":
            stage = cells[0]
            shown[stage] = []
        else:
            shown[stage].append((cells[0].removeprefix("dropped: "), int(cells[4])))
    # every stage and every reason, in summary order, reasons most frequent first
    assert shown == {s: sorted(r.items(), key=lambda kv: -kv[1]) for s, r in reasons.items()}


def test_same_stage_name_twice_keeps_reasons_apart():
    d = full(stage_summary=summary([("filter", 10, 8, {"a_code": 2}),
                                    ("filter", 8, 5, {"b_code": 3})]))
    funnel = section(render(d), "funnel")
    first, second = funnel.split("<td>filter</td>")[1:]
    assert "a_code" in first and "b_code" not in first
    assert "b_code" in second and "a_code" not in second


def test_instance_names_in_fixed_text():
    """Text that names a stage by kind names the pipeline's instance of that kind."""
    stages = ["download", "score_b32", "match_en", "prune_dbp", "report"]
    d = full(stages=stages, ran={"download": True, "score_b32": True, "report": True},
             kinds={"score_b32": "score", "match_en": "match", "prune_dbp": "prune"},
             concepts=None, clusters=None, random_weights=True,
             stage_summary=summary([("download", 10, 9, {}), ("score_b32", 9, 9, {})]))
    page = render(d)
    assert "match_en not run (in the pipeline, but no output yet)" in section(page,
                                                                             "rank-frequency")
    assert "prune_dbp not run (in the pipeline, but no output yet)" in section(page,
                                                                              "clusters")
    assert "Not run: match_en, prune_dbp." in section(page, "funnel")
    assert "score_b32.pretrained: none" in section(page, "overview")
    assert "kept by score_b32" in section(page, "scores")


@pytest.mark.parametrize("missing", ["match", "scores", "clusters", "coverage"])
def test_sections_without_optional_parts(missing):
    stages = [s for s in STAGES if s != {"scores": "score", "clusters": "prune"}.get(missing)]
    over: dict = {"stages": stages, "ran": {s: True for s in stages}}
    if missing == "match":
        over |= {"concepts": None, "concept_columns": {}, "stages": stages[:2] + stages[3:]}
    elif missing == "scores":
        over["scores"] = None
    elif missing == "clusters":
        over["clusters"] = None
    else:
        over |= {"coverage": None, "coverage_note": "ImageNet class names unavailable"}
    page = render(full(**over))
    assert_self_contained(page)
    if missing == "match":
        for sid in ("rank-frequency", "head-tail", "entry-counts", "top-entries"):
            assert "match not run (not in this pipeline)" in section(page, sid), sid
        assert "entries matched" not in section(page, "overview")
    elif missing == "scores":
        assert "score not run (not in this pipeline)" in section(page, "scores")
    elif missing == "clusters":
        assert "prune not run (not in this pipeline)" in section(page, "clusters")
    else:
        assert "ImageNet class names unavailable" in section(page, "imagenet")
        assert "<table" not in section(page, "imagenet")


def test_empty_variants():
    """Stages that ran but produced nothing to plot each say so in their section."""
    d = full(concepts=concepts([]), scores={**scores(), "n": 0}, random_weights=True,
             clusters=pa.table({"cluster_id": pa.array([], pa.int32()),
                                "size": pa.array([], pa.int64())}),
             coverage=coverage(["tench", "crane"], [0, 0], [0, 0]),
             stage_summary=summary([]), versions={}, config={}, notes=[])
    page = render(d)
    assert_self_contained(page)
    assert "No stage has run yet." in section(page, "funnel")
    assert "match ran, but no caption matched" in section(page, "rank-frequency")
    assert "No entry matched." in section(page, "top-entries")
    scores_html = section(page, "scores")
    assert "score ran, but no pair has a score." in scores_html and "Random weights" in scores_html
    assert "prune ran, but clusters.parquet is empty." in section(page, "clusters")
    imagenet = section(page, "imagenet")
    assert "No class has a pair in the pool." in imagenet
    assert "No class has a pair after curation." in imagenet
    assert "(no config recorded)" in section(page, "config")
    assert "Versions" not in page
    assert 'id="random-weights-warning"' in page


def test_partial_parts():
    """Optional pieces inside a section: no dbp, no threshold, balance not run, stale stages."""
    d = full(clusters=clusters(with_dbp=False), scores={**scores(), "threshold": None},
             balance_ran=False, ran={s: s != "balance" for s in STAGES})
    page = render(d)
    assert_self_contained(page)
    assert "density-based pruning (prune.dbp) was off" in section(page, "clusters")
    assert "threshold" not in section(page, "scores")
    assert "balance did not run: t is the configured default" in section(page, "head-tail")
    assert "Not run: balance." in section(page, "funnel")
    assert "balance <em>(not run)</em>" in section(page, "overview")


def test_render_is_deterministic():
    d = full()
    assert render(d) == render(d)


def test_extra_sections_show_sheets_aesthetic_languages_and_audit():
    """The sections fed by the extras: escaped captions, thumbnails as data URIs, the
    aesthetic histogram, the language table (shares of pool and final) and audit rates."""
    import numpy as np

    from curate.stages._report_extras import AESTHETIC_EDGES

    thumb = "data:image/jpeg;base64,AAAA"
    sheets = [{"stage": "prune", "reason": "semantic_duplicate", "dropped": 6,
               "items": [{"uid": "u1", "caption": "<b>cat</b> & dog", "thumb": thumb},
                         {"uid": "u2", "caption": "no image", "thumb": None}]}]
    hist = np.zeros(len(AESTHETIC_EDGES) - 1, np.int64)
    hist[40:50] = 3
    page = render(full(
        sheets=sheets,
        aesthetic={"aesthetic": {"edges": AESTHETIC_EDGES, "all": hist, "final": hist // 3,
                                 "warning": "head vit_l_14 expects OpenAI ViT-L-14"}},
        languages={"pool": {"en": 75, "de": 25}, "final": {"en": 40, "de": 10}},
        false_drops=pa.table({"reason": ["semantic_duplicate"], "labelled": [20],
                              "false_drops": [3], "rate": [0.15], "ci_low": [0.052],
                              "ci_high": [0.36]})))
    assert_self_contained(page)
    s = section(page, "contact-sheets")
    assert "&lt;b&gt;cat&lt;/b&gt; &amp; dog" in s and s.count(thumb) == 1
    assert "semantic_duplicate" in s and "6 dropped" in s
    a = section(page, "aesthetic")
    assert "data:image/png;base64," in a and "expects OpenAI ViT-L-14" in a and "30 pairs" in a
    lang = section(page, "languages")
    assert "75.0%" in lang and "80.0%" in lang and "20.0%" in lang
    f = section(page, "false-drops")
    assert "15.0%" in f and "5.2-36.0%" in f
    empty = render(full())
    for sid in ("contact-sheets", "aesthetic", "languages", "false-drops"):
        assert 'class="notrun"' in section(empty, sid), sid
