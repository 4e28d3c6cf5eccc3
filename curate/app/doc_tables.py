"""The generated tables of docs/ARCHITECTURE.md: stage kinds, their steps, their outputs and
their reason codes, rendered from the registry so the file cannot drift from the code (the
hand-written tables once listed 11 of 15 kinds).

Each table sits between two markers in the file::

    <!-- BEGIN generated: kinds (python -m curate.app.doc_tables) -->
    ...
    <!-- END generated: kinds -->

``python -m curate.app.doc_tables --write`` (``make docs``) rewrites the blocks in place;
``--check`` exits 1 with a diff when they differ from what the code says (as
tests/test_doc_tables.py does). Every cell comes from a kind's class attributes; what those
cannot say comes from the two attributes made for it (``Stage.doc_notes``: a cell's note;
``Stage.doc_sections``: the sections the steps are listed with), never from text here.
"""

from __future__ import annotations

import argparse
import difflib
import pkgutil
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from curate.errors import ConfigError, CurateError
from curate.stages.base import ShardStep, Stage, StageSpec
from curate.stages.registry import builtin_kinds, parse_pipeline, remember
from curate.stages.runtime import build

Kinds = Mapping[str, type[Stage]]
COMMAND = "python -m curate.app.doc_tables"
DOC = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"
#: a step, as the tables show it: (name, "shard" | "global" | "driver")
Step = tuple[str, str]


def _kinds(kinds: Kinds | None) -> Kinds:
    return builtin_kinds() if kinds is None else kinds


def _ticks(values: Any, sep: str = ", ") -> str:
    return sep.join(f"`{v}`" for v in values)


def _cell(text: str) -> str:
    """A table cell: a ``|`` in the text would end it."""
    return text.replace("|", "\\|").replace("\n", " ")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *map(_row, rows)])


def _overrides(cls: type[Stage], method: str) -> bool:
    """Whether a kind decides per instance (its own ``decides_with``/``sensitive_with``)."""
    return getattr(cls, method).__func__ is not getattr(Stage, method).__func__


def _noted(cls: type[Stage], column: str, value: str) -> str:
    note = cls.doc_notes.get(column)
    if not note:
        return value
    return f"{value} ({note})" if value else f"({note})"


def module_path(cls: type[Stage]) -> str:
    """Where a kind's code is, relative to ``curate/``: ``stages/score.py``, or for a
    package ``stages/prune/`` and its modules; a class outside curate: its module's name."""
    name = cls.__module__
    module = sys.modules.get(name)
    rel = name.removeprefix("curate.").replace(".", "/")
    if module is None or not hasattr(module, "__path__"):
        return f"`{rel}.py`"
    subs = [m.name for m in pkgutil.iter_modules(module.__path__)]
    return f"`{rel}/` (`__init__.py`" + (f"; {_ticks(subs)})" if subs else ")")


def view_of(cls: type[Stage]) -> str | None:
    """The SQL view over the kind's shards, as ``curate query`` defines it (app/query.py):
    a per-shard kind, or one that declares a view over its own shards (emit)."""
    return (cls.view or cls.folder) if cls.per_shard or cls.view is not None else None


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# ---------------------------------------------------------------------------- (1) kinds
def render_kinds(kinds: Kinds | None = None) -> str:
    """§2.1: one row per kind, the columns its class attributes declare."""
    rows = []
    for kind, cls in _kinds(kinds).items():
        decides = (cls.doc_notes.get("decides") or "per instance"
                   if _overrides(cls, "decides_with") else _yes(cls.decides))
        rows.append([
            f"`{kind}`", _noted(cls, "module", module_path(cls)), f"`{cls.folder}`",
            f"`{view_of(cls)}`" if view_of(cls) else "(none)", decides, _yes(cls.per_shard),
            _yes(cls.always_rerun), _ticks(cls.requires),
            _noted(cls, "joins", f"`{', '.join(cls.joins)}`" if cls.joins else ""),
            _ticks(cls.views.values())])
    return _table(["kind", "module", "folder", "view", "decides", "per_shard",
                   "always_rerun", "requires", "joins", "extra views"],
                  [[_cell(c) for c in r] for r in rows])


# ---------------------------------------------------------------------------- (2) steps
def _step_type(step: Any) -> str:
    if isinstance(step, ShardStep):
        return "shard"
    return "driver" if step.plan is list else "global"


def _pipeline_stages(kind: str, kinds: Kinds) -> list[str]:
    """``kind`` after the kinds it requires (and theirs), as a pipeline must list them."""
    out: list[str] = []
    for need in _kinds(kinds).get(kind, builtin_kinds().get(kind)).requires:
        out += [k for k in _pipeline_stages(need, kinds) if k not in out]
    return [*out, kind]


def steps_with(kind: str, cls: type[Stage], section: dict[str, Any],
               kinds: Kinds | None = None) -> list[Step]:
    """The steps of an instance of ``kind`` with ``section``, built on an empty temporary
    run directory (nothing is read or written: a stage lists its steps from its config).
    A kind that is not built in is remembered as a plugin so its pipeline parses."""
    kinds = _kinds(kinds)
    if kind not in builtin_kinds():
        remember(kind, cls)
    data = {"stages": _pipeline_stages(kind, kinds), kind: section}
    pipe = parse_pipeline(data, f"{kind} (docs)")
    with tempfile.TemporaryDirectory(prefix="curate-docs-") as run:
        stage = build(StageSpec(kind, run, pipe.dump(), "docs"), pipeline=pipe)
        return [(s.name, _step_type(s)) for s in stage.steps()]


def kind_steps(kinds: Kinds | None = None) -> dict[str, list[list[Step]] | str]:
    """kind -> the steps of each of its ``doc_sections`` (first: the base), or the one-line
    reason it could not be built (a required key its ``doc_sections`` does not give)."""
    out: dict[str, list[list[Step]] | str] = {}
    for kind, cls in _kinds(kinds).items():
        try:
            out[kind] = [steps_with(kind, cls, s, kinds) for s in cls.doc_sections or ({},)]
        except CurateError as err:
            out[kind] = f"cannot build: {err} (give {cls.__name__}.doc_sections)"
    return out


def _groups(steps: list[Step]) -> list[list[Step]]:
    """Runs of numbered steps of one type (``select0`` .. ``select5``) as one group."""
    groups: list[list[Step]] = []
    for name, typ in steps:
        prev = groups[-1][-1] if groups else None
        m, pm = re.fullmatch(r"(.*\D)(\d+)", name), prev and re.fullmatch(r"(.*\D)(\d+)",
                                                                          prev[0])
        if m and pm and prev[1] == typ and m[1] == pm[1] and int(m[2]) == int(pm[2]) + 1:
            groups[-1].append((name, typ))
        else:
            groups.append([(name, typ)])
    return groups


def steps_text(steps: list[Step]) -> str:
    """``model`` (driver) → ``shards`` (shard) → ``select0`` … ``select5`` (global)."""
    return " → ".join((f"`{g[0][0]}`" if len(g) == 1 else f"`{g[0][0]}` … `{g[-1][0]}`")
                      + f" ({g[0][1]})" for g in _groups(steps))


def _flow(section: dict[str, Any]) -> str:
    return "`" + yaml.safe_dump(section, default_flow_style=True, sort_keys=False).strip() + "`"


def _changes(base: list[Step], other: list[Step]) -> str:
    """What a variant's steps add (and where) or drop, against the base's."""
    sm = difflib.SequenceMatcher(a=[n for n, _ in base], b=[n for n, _ in other],
                                 autojunk=False)
    out = []
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op in ("delete", "replace"):
            out.append(f"drops {steps_text(base[a0:a1])}")
        if op in ("insert", "replace"):
            where = f"after `{base[a0 - 1][0]}`" if a0 else "first"
            out.append(f"adds {steps_text(other[b0:b1])} {where}")
    return ", ".join(out) or "the same steps"


def render_steps(kinds: Kinds | None = None) -> str:
    """§2.3: each kind's steps with its base section, and what each variant changes."""
    rows = []
    for kind, found in kind_steps(kinds).items():
        if isinstance(found, str):
            rows.append([f"`{kind}`", found, ""])
            continue
        sections = _kinds(kinds)[kind].doc_sections or ({},)
        base = steps_text(found[0])
        if sections[0]:
            base = f"with {_flow(sections[0])}: {base}"
        variants = [f"{_flow(s)}: {_changes(found[0], steps)}"
                    for s, steps in zip(sections[1:], found[1:], strict=True)]
        rows.append([f"`{kind}`", base, "; ".join(variants)])
    return _table(["kind", "steps", "with another section"],
                  [[_cell(c) for c in r] for r in rows])


# ---------------------------------------------------------------------------- (3) outputs
def render_outputs(kinds: Kinds | None = None) -> str:
    """§4: each kind's folder, its shard files and view, and its extra files' views."""
    rows = []
    for kind, cls in _kinds(kinds).items():
        f = cls.folder
        shards = (f"`{f}/part-NNNNN.parquet` (one per pool shard)" if cls.per_shard else
                  f"`{f}/part-NNNNN.parquet` (its own shards)" if view_of(cls) else "")
        extra = ", ".join(f"`{f}/{file}` → `{view}`" for file, view in cls.views.items())
        rows.append([f"`{kind}`", f"`{f}/`", shards,
                     f"`{view_of(cls)}`" if view_of(cls) else "", extra])
    return _table(["kind", "folder", "shard files", "view", "extra files → view"],
                  [[_cell(c) for c in r] for r in rows])


# ---------------------------------------------------------------------------- (4) reasons
def render_reasons(kinds: Kinds | None = None) -> str:
    """§6: every code a kind declares, with whether a safety rule writes it."""
    rows = []
    for kind, cls in _kinds(kinds).items():
        for code, meaning in cls.reasons.items():
            safety = ("yes" if code in cls.sensitive else
                      cls.doc_notes.get("sensitive") or "per instance"
                      if _overrides(cls, "sensitive_with") else "")
            rows.append([f"`{code}`", kind, safety, meaning])
    return _table(["code", "stage", "safety rule", "meaning"],
                  [[_cell(c) for c in r] for r in rows])


RENDERERS: dict[str, Callable[[Kinds | None], str]] = {
    "kinds": render_kinds, "steps": render_steps, "outputs": render_outputs,
    "reasons": render_reasons}


def begin(name: str) -> str:
    return f"<!-- BEGIN generated: {name} ({COMMAND}) -->"


def end(name: str) -> str:
    return f"<!-- END generated: {name} -->"


def _span(text: str, name: str, source: str) -> tuple[int, int]:
    """Where block ``name``'s content is in ``text`` (after its BEGIN line, up to END)."""
    start, stop = text.find(begin(name)), text.find(end(name))
    if start < 0 or stop < start:
        raise ConfigError(f"{source}: no generated block {name!r}: put the lines "
                          f"{begin(name)!r} and {end(name)!r} where the table goes")
    return start + len(begin(name)), stop


def blocks_in(text: str, source: str = "doc") -> dict[str, str]:
    """The content of every generated block of a document, by name (without markers)."""
    out = {}
    for name in RENDERERS:
        a, b = _span(text, name, source)
        out[name] = text[a:b].strip("\n")
    return out


def rendered(kinds: Kinds | None = None) -> dict[str, str]:
    return {name: render(kinds) for name, render in RENDERERS.items()}


def fill(text: str, blocks: Mapping[str, str], source: str = "doc") -> str:
    """``text`` with each block's content replaced by ``blocks[name]``."""
    for name, table in blocks.items():
        a, b = _span(text, name, source)
        text = text[:a] + "\n" + table + "\n" + text[b:]
    return text


def main(argv: list[str] | None = None) -> int:
    """``--write``: rewrite the blocks; ``--check``: exit 1 and a diff when they differ."""
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the blocks in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when they differ")
    ap.add_argument("--doc", type=Path, default=DOC, help=f"default: {DOC}")
    args = ap.parse_args(argv)
    try:
        old = args.doc.read_text(encoding="utf-8")
        new = fill(old, rendered(), str(args.doc))
    except (OSError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.write:
        if new != old:
            args.doc.write_text(new, encoding="utf-8")
        print(f"{args.doc}: {'rewritten' if new != old else 'already current'}")
        return 0
    if new == old:
        return 0
    sys.stdout.writelines(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        f"{args.doc} (as written)", f"{args.doc} (as the code says)"))
    print(f"\n{args.doc}: the generated tables differ from the code; run `make docs` "
          f"({COMMAND} --write)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
