"""What the run report shows, as data: :class:`ReportData` and the page's sections.

The contract between :mod:`curate.stages.report`, which gathers the numbers from a run, and
the renderer (:mod:`curate.report.sections`, :mod:`curate.report.html`), which only formats
what it is given. Kept in a module of its own so that both renderer modules share it without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

#: the sections of the page, in order: (id, title); tests check every id is present
SECTIONS = (
    ("overview", "Overview"),
    ("funnel", "Stage funnel"),
    ("rank-frequency", "Concept rank-frequency"),
    ("head-tail", "Head and tail"),
    ("entry-counts", "Entries with at least k pairs"),
    ("top-entries", "Most and least frequent entries"),
    ("scores", "CLIP scores"),
    ("clusters", "Concept clusters"),
    ("imagenet", "ImageNet-1k coverage"),
    ("safety", "Safety: NSFW, violence, toxicity, hash lists"),
    ("contact-sheets", "What each rule removed"),
    ("aesthetic", "Aesthetic scores"),
    ("languages", "Language mix"),
    ("false-drops", "Filter audit"),
    ("config", "Configuration"),
)


@dataclass
class ReportData:
    """Everything the page shows; built by the report stage, rendered by :func:`render`."""

    run_url: str
    generated: str
    stages: list[str]
    ran: dict[str, bool]
    stage_summary: pa.Table
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)
    top_n: int = 30
    random_weights: bool = False
    notes: list[str] = field(default_factory=list)
    #: concept_frequency table (None: match did not run)
    concepts: pa.Table | None = None
    #: column name -> label, in display order (count_pool, count_after_X..., count_final)
    concept_columns: dict[str, str] = field(default_factory=dict)
    t: int | None = None
    balance_ran: bool = False
    #: {"edges", "all", "kept", "threshold", "threshold_label", "n", "sum", "n_kept"}
    scores: dict[str, Any] | None = None
    clusters: pa.Table | None = None
    coverage: pa.Table | None = None
    coverage_note: str | None = None
    #: contact sheets: [{stage, reason, dropped, items: [{uid, caption, thumb, blurred}]}];
    #: a safety rule's sheet has ``withheld: True`` and no items (counted, never shown)
    sheets: list[dict[str, Any]] = field(default_factory=list)
    #: aesthetic stage -> {"edges", "all", "final", "warning"}
    aesthetic: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: {"pool": {lang: n}, "final": {lang: n}}
    languages: dict[str, dict[str, int]] = field(default_factory=dict)
    #: [{label, cluster, kept: [items], dropped: [items]}] for chosen prune clusters
    cluster_sheets: list[dict[str, Any]] = field(default_factory=list)
    #: download's most failing hosts: [{host, pairs, failed, failure_rate, by_reason}]
    hosts: list[dict[str, Any]] = field(default_factory=list)
    #: decontaminate instance -> {eval set: pairs dropped}
    contamination: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the safety section (``curate.stages._report_safety.safety_page``): histograms and
    #: counts only
    safety: dict[str, Any] = field(default_factory=dict)
    #: audit/false_drops.parquet (None: no labels)
    false_drops: pa.Table | None = None
    final_label: str = "after curation"
    final_pairs: int = 0
    #: stage instance name -> kind (``score_b32`` -> ``score``); a name not listed is its own
    #: kind, so a pipeline of plain kind names needs none
    kinds: dict[str, str] = field(default_factory=dict)
