"""reports/README.md, the run's dataset card (curate/stages/_report_card.py): a valid Hugging
Face card header, and every number in its tables equal to run.json's record (read back from
the card's marked tables, not from the module that wrote them)."""

from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config

from curate.core.rundir import step_info

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def example(example_run) -> tuple:
    """The session's offline example run (conftest): its run dir and run.json as it is."""
    out = example_run[0]
    return out, json.loads((out / "run.json").read_text())


def marked(text: str, name: str) -> list[list[str]]:
    """The rows of the table between <!-- curate:NAME --> and <!-- /curate:NAME -->."""
    block = text.split(f"<!-- curate:{name} -->", 1)[1].split(f"<!-- /curate:{name} -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in block.strip().splitlines()]
    return rows[2:]  # header and rule


def num(s: str) -> int:
    return int(s.replace(",", ""))


@pytest.fixture
def run(example_run):
    return example(example_run)


def test_header_is_a_valid_dataset_card(run):
    from huggingface_hub import DatasetCard

    out, m = run
    card = DatasetCard.load(out / "reports" / "README.md")
    d = card.data.to_dict()
    assert d["license"] == "other"
    assert d["pretty_name"] == "run"
    assert d["size_categories"] == ["n<1K"]  # 123 pairs
    assert d["task_categories"] == ["zero-shot-image-classification", "image-to-text",
                                    "text-to-image"]
    assert "language" not in d  # no language stage ran
    assert d["configs"][0]["data_files"][0]["path"] == "../curated/part-*.parquet"


def test_numbers_equal_run_json(run):
    out, m = run
    text = (out / "reports" / "README.md").read_text()
    numbers = {r[0]: r[1] for r in marked(text, "numbers")}
    curated = sum(pq.read_metadata(f).num_rows for f in (out / "curated").glob("part-*.parquet"))
    final = step_info(m["stages"]["report"], "count")["pairs_final"]
    assert num(numbers["final pairs"]) == final == curated
    assert num(numbers["pool rows"]) == m["pool"]["rows"]
    assert num(numbers["pool duplicates"]) == m["pool"]["duplicates"]
    assert num(numbers["images not fetched"]) == m["stages"]["download"]["dropped"][
        "download_failed"]
    stages = {r[0]: r for r in marked(text, "stages")}
    assert num(stages["ingest"][3]) == m["pool"]["rows"] + m["pool"]["duplicates"]
    for name in m["config"]["stages"]:
        if name == "report":
            assert name not in stages
            continue
        st = m["stages"][name]
        _, kind, status, pairs_in, kept, dropped, reasons = stages[name]
        assert (kind, status) == (st["kind"], st["status"])
        assert (num(pairs_in), num(kept)) == (st["rows_in"], st["kept"])
        assert num(dropped) == sum(st["dropped"].values())
        got = dict(x.split(": ") for x in reasons.split("; ")) if reasons else {}
        assert {k: num(v) for k, v in got.items()} == st["dropped"]


def test_sections_say_what_the_run_did_not_do(run):
    out, m = run
    text = (out / "reports" / "README.md").read_text()
    for h in ("Motivation", "Composition", "Collection", "Preprocessing", "Safety", "Privacy",
              "Decontamination", "Deduplication", "Language", "Concept coverage",
              "Known limitations"):
        assert f"\n## {h}\n" in text
    assert "faces were NOT blurred" in text
    assert "RANDOM weights" in text  # score's random_init
    assert "overlap with evaluation sets was NOT checked" in text
    assert f"`{m['pool']['inputs'][0]['path']}`" in text
    sem = m["stages"]["prune"]["dropped"]["semantic_duplicate"]
    assert f"`prune` `semantic_duplicate`: {sem:,}." in text
    concepts = pq.read_table(out / "reports" / "concept_frequency.parquet")
    assert re.search(rf"{concepts.num_rows:,} metadata entries matched", text)


def test_language_header_from_the_language_stage(tmp_path, ray_session):
    from huggingface_hub import DatasetCard

    from curate.driver import run_pipeline

    caps = (["a red bicycle leaning on a wall near the old harbour"] * 6
            + ["une photo d'un vélo rouge appuyé contre un mur près du vieux port"] * 3
            + ["ein rotes Fahrrad lehnt an einer Mauer am alten Hafen"] * 3)
    pq.write_table(pa.table({"caption": [f"{c} {i}" for i, c in enumerate(caps)]}),
                   tmp_path / "pool.parquet")
    cfg = base_config(stages=["language", "emit", "report"], pool={"shard_size": 8},
                      language={"languages": ["en", "fr"]},
                      report={"license": "cc-by-4.0", "pretty_name": "Tiny"})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=str(tmp_path / "pool.parquet"))
    card = DatasetCard.load(tmp_path / "run" / "reports" / "README.md")
    d = card.data.to_dict()
    assert (d["license"], d["pretty_name"]) == ("cc-by-4.0", "Tiny")
    assert d["language"] == ["en", "fr"]
    text = card.text
    assert "lid.176.ftz" in text and step_info(m["stages"]["language"], "model")["sha256"] in text
    langs = {r[0]: num(r[1]) for r in marked(text, "languages")}
    assert langs == {"en": 6, "fr": 3}


def _pool_for(name: str, path, n: int = 60) -> str:
    """A small pool of what each bundled pipeline reads (no images, no model)."""
    import numpy as np

    rng = np.random.default_rng(0)
    d = 768 if name == "laion_aesthetics" else 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[: n // 3] = x[0] + 0.001 * x[: n // 3]  # near-duplicates for SemDeDup
    if name == "laion_aesthetics":  # real ViT-L/14 embeddings rated 0-9: some score > 7
        from pathlib import Path

        real = Path(__file__).parent / "data" / "laion_aesthetic" / "vit_l_14"
        r = np.concatenate([np.load(real / f"rating{i}.npy") for i in range(10)])
        x = (r[np.arange(n) % len(r)] + 0.001 * x).astype(np.float32)
    cols = {"url": [f"http://example.com/{i}.jpg" for i in range(n)],
            "caption": [f"a photo of a red bicycle number {i} near the old harbour"
                        for i in range(n)],
            "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)}
    if name == "datacomp_basic":
        cols["text"] = cols.pop("caption")
        cols["original_width"] = [300 if i % 4 else 100 for i in range(n)]
        cols["original_height"] = [300] * n
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.mark.parametrize("name,overrides", [
    ("dbp", ["prune.k=4", "prune.dbp_k=3", "prune.niter=5", "prune.n_neighbors=3"]),
    ("datacomp_basic", []),
    ("laion_aesthetics", []),
])
def test_card_is_true_for_bundled_offline_pipelines(tmp_path, ray_session, name, overrides):
    """Every bundled pipeline that runs offline on a pool that brings what it reads: its card
    loads as a dataset card and its tables equal run.json."""
    from pathlib import Path

    from huggingface_hub import DatasetCard

    from curate.driver import run_pipeline
    from curate.stages.registry import load_pipeline

    cfg = load_pipeline(Path(__file__).parents[1] / "pipelines" / f"{name}.yaml",
                        ["pool.shard_size=25", "emit.rows_per_shard=20", *overrides])
    out = tmp_path / "run"
    m = run_pipeline(cfg, str(out), pool=_pool_for(name, tmp_path / "pool.parquet"))
    card = DatasetCard.load(out / "reports" / "README.md")
    assert card.data.to_dict()["size_categories"] == ["n<1K"]
    text = (out / "reports" / "README.md").read_text()
    numbers = {r[0]: r[1] for r in marked(text, "numbers")}
    curated = sum(pq.read_metadata(f).num_rows for f in (out / "curated").glob("part-*.parquet"))
    final = step_info(m["stages"]["report"], "count")["pairs_final"]
    assert num(numbers["final pairs"]) == final == curated
    assert num(numbers["pool rows"]) == m["pool"]["rows"]
    stages = {r[0]: r for r in marked(text, "stages")}
    for stage in m["config"]["stages"]:
        if stage == "report":
            continue
        st = m["stages"][stage]
        _, kind, status, pairs_in, kept, dropped, reasons = stages[stage]
        assert (kind, status, num(pairs_in), num(kept)) == (st["kind"], st["status"],
                                                           st["rows_in"], st["kept"])
        got = dict(x.split(": ") for x in reasons.split("; ")) if reasons else {}
        assert {k: num(v) for k, v in got.items()} == st["dropped"]
    assert "faces were NOT blurred" in text
