"""docs/ARCHITECTURE.md's tables of kinds, steps, outputs and reason codes are generated from
the registry (curate.app.doc_tables): the file must hold what the code says now, so a kind
added (or changed) without `make docs` fails here, naming the command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from curate.app import doc_tables
from curate.config import Section
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage
from curate.stages.pool_checks import BAD_ROW_CODES
from curate.stages.registry import builtin_kinds

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
FIX = "run `make docs` (python -m curate.app.doc_tables --write) and commit the file"


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _first_cells(block: str) -> list[str]:
    """The first cell of every body row of a markdown table, without its backticks."""
    rows = [r for r in block.splitlines() if r.startswith("| ")][2:]
    return [r.split(" | ")[0].removeprefix("| ").strip("`") for r in rows]


def test_generated_blocks_match_the_code():
    found = doc_tables.blocks_in(_doc(), str(DOC))
    stale = [name for name, table in doc_tables.rendered().items() if found[name] != table]
    assert not stale, f"{DOC.name}: generated tables {stale} differ from the code: {FIX}"


def test_doc_names_every_kind_and_code():
    """Read back from the file, independently of the renderer: one row per registered kind
    in each kind table, one per declared code in the codes table, and ingest's codes in the
    hand-written one."""
    blocks = doc_tables.blocks_in(_doc(), str(DOC))
    kinds = sorted(builtin_kinds())
    for name in ("kinds", "steps", "outputs"):
        assert sorted(_first_cells(blocks[name])) == kinds, f"{name}: {FIX}"
    codes = sorted(c for cls in builtin_kinds().values() for c in cls.reasons)
    assert sorted(_first_cells(blocks["reasons"])) == codes, FIX
    section6 = _doc().split("## 6. Reason codes", 1)[1].split("## 7.", 1)[0]
    assert all(f"| `{code}` | ingest" in section6 for code in BAD_ROW_CODES)


def test_every_kind_lists_its_steps_and_says_what_it_decides_per_instance():
    for found in doc_tables.kind_steps().values():
        assert not isinstance(found, str), found
    for kind, cls in builtin_kinds().items():
        for method, column in (("decides_with", "decides"), ("sensitive_with", "sensitive")):
            if getattr(cls, method).__func__ is not getattr(Stage, method).__func__:
                assert cls.doc_notes.get(column), f"{kind} overrides {method}: say when " \
                    f"in doc_notes[{column!r}]"


def _described_steps() -> dict[str, str]:
    """kind -> its row of the hand-written "What the steps do" table."""
    text = _doc().split("What the steps do", 1)[1].split("\n\n", 2)[1]
    return {r.split(" | ")[0].removeprefix("| "): r for r in text.splitlines()[2:]}


def test_step_descriptions_name_every_step_the_code_lists():
    rows = _described_steps()
    for kind, variants in doc_tables.kind_steps().items():
        assert kind in rows, f"What the steps do: no row for {kind}"
        for name, _ in {s for steps in variants for s in steps}:
            numbered = re.fullmatch(r"(.*\D)\d+", name)
            ok = f"`{name}`" in rows[kind] or (numbered and f"`{numbered[1]}0` …" in rows[kind])
            assert ok, f"What the steps do: {kind}'s row does not name step {name!r}"


# ------------------------------------------------------------------ a kind of one's own
class ToyConfig(Section):
    extra: bool = False


class ToyKind(Stage):
    kind = "toy_docs"
    folder = "toy"
    decides = True
    requires = ("match",)
    Config = ToyConfig
    schema = pa.schema([("uid", pa.string()), ("chars", pa.int32()), *DECISION_FIELDS])
    reasons = {"toy_short": "fewer characters than the toy wants", "toy_bad": "a | b"}
    sensitive = ("toy_bad",)
    joins = ("chars",)
    views = {"toy_counts.parquet": "toy_counts"}
    doc_notes = {"joins": "+ `more` with `extra`"}
    doc_sections = ({}, {"extra": True})

    def steps(self) -> list:
        steps: list[Any] = [GlobalStep.on_driver("check", dict), ShardStep(),
                            *(GlobalStep(f"pass{i}", plan=lambda: [1], map=len, commit=dict)
                              for i in range(3))]
        if self.section.extra:
            steps.append(GlobalStep.on_driver("tail", dict))
        return steps


def test_an_extra_kind_appears_in_every_table():
    kinds = {"toy_docs": ToyKind}
    module = ToyKind.__module__.replace(".", "/")
    assert doc_tables.render_kinds(kinds).splitlines()[2] == (
        f"| `toy_docs` | `{module}.py` | `toy` | `toy` | yes | yes | no | `match` | "
        "`chars` (+ `more` with `extra`) | `toy_counts` |")
    assert doc_tables.render_outputs(kinds).splitlines()[2] == (
        "| `toy_docs` | `toy/` | `toy/part-NNNNN.parquet` (one per pool shard) | `toy` | "
        "`toy/toy_counts.parquet` → `toy_counts` |")
    assert doc_tables.render_reasons(kinds).splitlines()[2:] == [
        "| `toy_short` | toy_docs |  | fewer characters than the toy wants |",
        "| `toy_bad` | toy_docs | yes | a \\| b |"]
    assert doc_tables.render_steps(kinds).splitlines()[2] == (
        "| `toy_docs` | `check` (driver) → `shards` (shard) → `pass0` … `pass2` (global) | "
        "`{extra: true}`: adds `tail` (driver) after `pass2` |")


def test_check_fails_on_a_stale_doc_and_write_mends_it(tmp_path, capsys):
    doc = tmp_path / "ARCHITECTURE.md"
    lost = "| `toxic` | toxicity | yes |"
    text = _doc()
    row = next(r for r in text.splitlines() if r.startswith(lost))
    doc.write_text(text.replace(row + "\n", ""), encoding="utf-8")
    assert doc_tables.main(["--check", "--doc", str(doc)]) == 1
    out = capsys.readouterr()
    assert f"+{row}" in out.out.splitlines() and "make docs" in out.err
    assert doc_tables.main(["--write", "--doc", str(doc)]) == 0
    assert row in doc.read_text(encoding="utf-8").splitlines()
    assert doc_tables.main(["--check", "--doc", str(doc)]) == 0


def test_a_doc_without_the_markers_is_an_error(tmp_path, capsys):
    doc = tmp_path / "ARCHITECTURE.md"
    doc.write_text(_doc().replace(doc_tables.end("steps"), ""), encoding="utf-8")
    assert doc_tables.main(["--check", "--doc", str(doc)]) == 2
    assert "<!-- END generated: steps -->" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        doc_tables.main([])  # one of --write / --check is required
