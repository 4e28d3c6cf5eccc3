"""The run's datasheet: ``reports/README.md``, a Hugging Face dataset card.

Written by the report stage at its commit (:func:`write_card`), after
``reports/stage_summary.parquet`` and ``reports/concept_frequency.parquet``. It answers the
questions of "Datasheets for Datasets" (Gebru et al. 2021) from the run's own records only:
run.json (pool, each stage's config, status, counts, ``by_detail`` and the ``global`` info
its steps committed) and the report tables. A number that is not recorded is written as
"not recorded", never guessed. The text is a jinja2 template
(``curate/report/templates/card.md``); this module only gathers the facts.

Stable markers in the body (``<!-- curate:NAME -->`` ... ``<!-- /curate:NAME -->``) delimit
the numbers table and the per-stage table, so tools (and tests) read them back without
parsing prose. ``curate publish`` (:mod:`curate.app.publish`) copies the card with
``configs`` rewritten for the published layout (:func:`published_card`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow.parquet as pq
import yaml

from curate.core.io import join, list_shards, write_bytes_atomic
from curate.core.rundir import RunDir, now, step_info, step_infos
from curate.stages._denylist import rules_version
from curate.stages._report_counts import OUTPUTS

log = logging.getLogger(__name__)

CARD = "README.md"
TASKS = ["zero-shot-image-classification", "image-to-text", "text-to-image"]
#: the Hub's size buckets (huggingface_hub.DatasetCardData's ``size_categories``)
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
         (1_000_000_000, "100M<n<1B"), (10_000_000_000, "1B<n<10B"),
         (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T")]
RUN_DATA = "../curated/part-*.parquet"  # from reports/README.md to the run's curated set
PUBLISHED_DATA = "data/*.parquet"
PUBLISHED_MARK = ("<!-- curate:published -->", "<!-- /curate:published -->")
#: keys of a stage's step infos (run.json ``stages.<name>.steps.<step>.info``) that describe a
#: model or its weights
MODEL_KEYS = ("model", "random_init", "head", "clip_model", "path", "sha256", "source",
              "source_commit", "licence", "license", "warning", "package", "version",
              "scikit_learn", "quality", "detector", "weights", "datacomp_lid_176_bin")
DEDUP_CODES = ("duplicate", "placeholder_image", "duplicate_image_bytes",
               "duplicate_image_pixels", "near_duplicate_image", "semantic_duplicate")
NOT_RECORDED = "not recorded"


def size_category(n: int) -> str:
    for bound, label in SIZES:
        if n < bound:
            return label
    return "n>1T"


def configs(path: str) -> list[dict[str, Any]]:
    return [{"config_name": "default", "data_files": [{"split": "train", "path": path}]}]


def _summary(rd: RunDir, folder: str) -> list[dict[str, Any]]:
    """stage_summary.parquet as one record per stage, its drop reasons attached."""
    with rd.fs.open(join(rd.path(folder), OUTPUTS["stage summary"]), "rb") as f:
        rows = pq.read_table(f).to_pylist()
    out: list[dict[str, Any]] = []
    for r in rows:
        if r["reason"] is None:
            out.append({**r, "reasons": {}})
        else:
            out[-1]["reasons"][r["reason"]] = r["count"]
    return out


def _concepts(rd: RunDir, folder: str, t: int) -> dict[str, Any] | None:
    path = join(rd.path(folder), OUTPUTS["concept frequency"])
    if not rd.fs.exists(path):
        return None
    with rd.fs.open(path, "rb") as f:
        c = pq.read_table(f, columns=["count_pool", "count_final", "head"]).to_pydict()
    head = sum(bool(h) for h in c["head"])
    return {"matched": len(c["head"]), "final": sum(1 for n in c["count_final"] if n > 0),
            "head": head, "tail": len(c["head"]) - head, "t": t,
            "pairs_head": sum(n for n, h in zip(c["count_pool"], c["head"]) if h)}


def _columns(rd: RunDir, folder: str | None) -> list[tuple[str, str]]:
    if folder is None:
        return []
    shards = list_shards(rd.fs, rd.path(folder))
    if not shards:
        return []
    with rd.fs.open(rd.path(folder, shards[0]), "rb") as f:
        schema = pq.ParquetFile(f).schema_arrow
    return [(f.name, str(f.type)) for f in schema]


def _model(glob: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k in MODEL_KEYS:
        if k in glob and glob[k] is not None:
            v = glob[k]
            out.append((k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)))
    return out


def _dump(section: Any) -> str:
    return yaml.safe_dump(section, sort_keys=False, default_flow_style=False).strip()


def context(stage: Any, manifest: dict[str, Any], totals: Any) -> dict[str, Any]:
    """Everything the template says, gathered from run.json and the report tables."""
    rd, cfg, plan = stage.rd, stage.pipeline, stage.state["plan"]
    folder = cfg.ref(stage.name).folder
    ran, mstages = plan["ran"], manifest.get("stages", {})
    pool = manifest.get("pool", {})
    summary = _summary(rd, folder)
    by_stage = {r["stage"]: r for r in summary}
    kinds = {r.name: r.kind for r in stage.before}
    kinds["ingest"] = "ingest"
    cfg_dump = manifest.get("config", {})

    def drops(code: str, kind: str | None = None) -> int:
        return sum(r["reasons"].get(code, 0) for r in summary
                   if kind is None or kinds.get(r["stage"]) == kind)

    def first(kind: str) -> Any:
        return next((r for r in stage.before if r.kind == kind and ran.get(r.name)), None)

    stages = []
    for r in summary:
        name = r["stage"]
        glob = step_infos(mstages.get(name))
        stages.append({**r, "kind": kinds.get(name, "?"),
                       "settings": _dump(cfg_dump[name]) if isinstance(
                           cfg_dump.get(name), dict) and cfg_dump[name] else None,
                       "model": [kv for info in glob.values() for kv in _model(info)]})
    emit = first("emit")
    emit_glob = step_info(mstages.get(emit.name), "write") if emit else {}
    download = first("download")
    dl = by_stage.get(download.name) if download else None
    score = first("score")
    score_glob = step_info(mstages.get(score.name), "model") if score else {}
    random_weights = score is not None and (
        cfg.section(score.name).pretrained == "none" or score_glob.get("random_init") is True)
    language = first("language")
    lang_glob = step_info(mstages.get(language.name), "model") if language else {}
    langs = {str(k): int(v) for k, v in totals.extras.languages.get("final", {}).items()
             if k not in (None, "", "None")} if plan.get("language") else {}
    bal = first("balance")
    concepts = (_concepts(rd, folder, cfg.section(bal.name).t if bal else cfg.balance.t)
                if plan.get("match") else None)
    faces = [r.name for r in stage.before if r.kind == "faces" and ran.get(r.name)]
    faces_glob = {n: step_info(mstages.get(n), "model") for n in faces}
    safety = [{"stage": n, "kind": kinds.get(n), "code": c, "count": by_stage[n]["reasons"]
               .get(c, 0)} for n, c in sorted(cfg.sensitive()) if n in by_stage]
    denylisted = {r.name: (mstages.get(r.name, {}).get("by_detail") or {}).get("denylisted")
                  for r in stage.before if r.kind == "download" and ran.get(r.name)}
    decon = [{"stage": r.name, "hits": step_info(mstages.get(r.name), "hits")
              .get("hits"), "dropped": by_stage.get(r.name, {}).get("dropped")}
             for r in stage.before if r.kind == "decontaminate" and ran.get(r.name)]
    dedup = [{"stage": r["stage"], "code": c, "count": r["reasons"][c]}
             for r in summary for c in DEDUP_CODES if c in r["reasons"]]
    not_run = [r.name for r in stage.before if not ran.get(r.name)]
    numbers = [("final pairs", totals.final, f"run.json stages.{stage.name}.steps.count."
                "info.pairs_final"),
               ("pool rows", pool.get("rows"), "run.json pool.rows"),
               ("pool rows read", pool.get("rows_read"), "run.json pool.rows_read"),
               ("pool duplicates", pool.get("duplicates"), "run.json pool.duplicates"),
               ("pool bad rows", sum((pool.get("bad_rows") or {}).values()),
                "run.json pool.bad_rows")]
    if emit:
        numbers.append(("curated rows written", mstages.get(emit.name, {}).get("kept"),
                        f"run.json stages.{emit.name}.kept"))
    if dl:
        numbers += [("images fetched", dl["kept"], f"stage_summary {dl['stage']} kept"),
                    ("images not fetched", dl["reasons"].get("download_failed", 0),
                     f"stage_summary {dl['stage']} download_failed"),
                    ("robots.txt disallowed", drops("robots_disallowed", "download"),
                     "stage_summary robots_disallowed"),
                    ("TDM reserved", drops("tdm_reserved", "download"),
                     "stage_summary tdm_reserved")]
    return {
        "run": rd.url, "generated": now(), "created": manifest.get("created"),
        "versions": manifest.get("versions", {}), "curate": manifest.get("versions", {})
        .get("curate", NOT_RECORDED), "pipeline": list(cfg.stages), "pool": pool,
        "pool_spec": pool.get("spec", NOT_RECORDED), "inputs": pool.get("inputs") or [],
        "bad_rows": pool.get("bad_rows") or {}, "final": totals.final, "numbers": numbers,
        "stages": stages, "columns": _columns(rd, emit.folder if emit else None),
        "emit": emit.name if emit else None, "emit_glob": emit_glob,
        "download": dl, "consent": (cfg_dump.get(download.name) or {}).get("consent")
        if download else None, "consent_files": step_info(
            mstages.get(download.name), "robots").get("consent_files")
        if download else None, "random_weights": random_weights, "score": score.name
        if score else None, "language": language.name if language else None,
        "lang_glob": lang_glob, "langs": sorted(langs.items(), key=lambda kv: (-kv[1], kv[0])),
        "lite_lid": "lid.176.ftz" in str(lang_glob.get("model", "")),
        "concepts": concepts, "faces": faces, "faces_glob": faces_glob,
        "faces_blurred": emit_glob.get("faces_blurred") is True,
        "images_with_faces": emit_glob.get("images_with_faces"), "safety": safety,
        "denylisted": denylisted, "decon": decon, "dedup": dedup, "not_run": not_run,
        "toxicity": [r.name for r in stage.before if r.kind == "toxicity"
                     and ran.get(r.name)], "nsfw": [r.name for r in stage.before
                                                    if r.kind == "nsfw" and ran.get(r.name)],
        "rules": rules_version(rd) or None, "NR": NOT_RECORDED,
        "publish_note": "This card describes the run directory; `curate publish RUN DIR` "
                        "writes a copy for the Hugging Face Hub.",
    }


def header(stage: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    sec = stage.section
    head: dict[str, Any] = {"license": sec.license,
                            "pretty_name": sec.pretty_name or stage.rd.url.rsplit("/", 1)[-1]}
    if ctx["langs"]:
        head["language"] = [k for k, _ in ctx["langs"]]
    head["size_categories"] = [size_category(ctx["final"])]
    head["task_categories"] = list(TASKS)
    head["tags"] = ["clip", "image-text", "curate"]
    head["configs"] = configs(RUN_DATA)
    return head


def render(head: dict[str, Any], ctx: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("curate.report", "templates"),
                             autoescape=False, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["n"] = lambda v: NOT_RECORDED if v is None else (
        f"{v:,}" if isinstance(v, int) else str(v))
    body = env.get_template("card.md").render(**ctx, head=head)
    return "---\n" + yaml.safe_dump(head, sort_keys=False) + "---\n\n" + body


def write_card(stage: Any, manifest: dict[str, Any], totals: Any) -> dict[str, Any]:
    """Write ``reports/README.md``; returns what the report's info records about it (the
    takedown and denylist rules' digest it describes: ``curate publish`` compares it)."""
    import jinja2

    ctx = context(stage, manifest, totals)
    try:
        text = render(header(stage, ctx), ctx)
    except jinja2.TemplateNotFound as err:  # an install without report/templates/*.md
        log.error("report: no dataset card: template %s is not installed", err)
        return {"rules_version": ctx["rules"] or ""}
    path = join(stage.rd.path(stage.pipeline.ref(stage.name).folder), CARD)
    write_bytes_atomic(stage.rd.fs, path, text.encode("utf-8"))
    return {"card": path, "rules_version": ctx["rules"] or ""}


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(YAML header, body) of a card."""
    if not text.startswith("---\n"):
        return {}, text
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head) or {}, body.lstrip("\n")


def published_card(text: str, note: str) -> str:
    """The run's card with ``configs`` for the published layout and ``note`` (how it was
    published) in place of the run card's publishing line."""
    head, body = split_card(text)
    head["configs"] = configs(PUBLISHED_DATA)
    a, b = PUBLISHED_MARK
    if a in body and b in body:
        body = body.split(a, 1)[0] + a + "\n" + note + "\n" + b + body.split(b, 1)[1]
    else:
        body += f"\n{a}\n{note}\n{b}\n"
    return "---\n" + yaml.safe_dump(head, sort_keys=False) + "---\n\n" + body
