"""The package's layering, checked from the source rather than only documented.

Every module under ``curate/`` is parsed with :mod:`ast`; nothing is imported, so the test is
fast and sees imports that only run on some paths. Layers, top to bottom (a module may import
only from its own layer or a lower one):

====  ==============================================================
7     cli: ``curate/cli*.py``
6     ``curate/app/`` (example, plan, query, summary)
5     ``curate/driver.py``
4     ``curate/stages/`` (ingest included)
3     ``curate/core/`` (engine, rundir, io, faults, progress)
2     ``curate/config.py``, ``curate/models/``, ``curate/vocab/``
1     ``curate/algorithms/``, ``curate/media/``, ``curate/report/``
0     ``curate/errors.py``, ``curate/__init__.py``
====  ==============================================================

Which imports count where:

- The layer rule and the third-party rules count every import at any depth: module level,
  inside functions and classes, under ``if TYPE_CHECKING:``.
- Two cycle checks: one over imports that run when the module is imported (module-level
  statements and class bodies, also under module-level ``if``/``try``; a cycle there breaks
  ``import`` with a partially initialised module), and one over every import at any depth,
  function bodies included (a lazy import hides a cycle, it does not remove it: two modules
  that need each other are one module, or a third is missing).
- ``from curate.x import y`` is an import of ``curate.x.y`` when that is a module, else of
  ``curate.x`` (the package ``__init__``). Parent packages that Python imports on the way
  are not edges: they are always initialised before their children.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "curate"

LAYERS = {
    "cli": 7,
    "app": 6,
    "driver": 5,
    "stages": 4,
    "core": 3,
    "config": 2, "models": 2, "vocab": 2,
    "algorithms": 1, "media": 1, "report": 1,
    "errors": 0,
}

MAX_LINES = 400
#: module path (relative to the repository root) -> why it may be longer for now
LINE_EXEMPT: dict[str, str] = {}

#: third-party top-level package -> (where it may be imported, why)
RESTRICTED = {
    "ray": (("curate/core/engine.py",),
            "Ray is the engine's business; everything else is plain functions on data"),
    "torch": (("curate/models/", "curate/stages/score"),
              "torch takes seconds to import and is only needed to embed"),
    "torchvision": (("curate/models/", "curate/stages/score"),
                    "torch takes seconds to import and is only needed to embed"),
    "open_clip": (("curate/models/", "curate/stages/score"),
                  "open_clip imports torch; the model layer wraps it"),
    "faiss": (("curate/algorithms/",),
              "FAISS is the k-means backend; stages call the algorithms layer"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    path: str  # its file, relative to the repository root
    line: int
    target: str  # dotted name of what is imported (a curate module, or a third-party name)
    runs_at_import: bool  # module level / class body, not in a function or TYPE_CHECKING

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.module}) imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute dotted base of ``from <base> import ...`` (relative forms included)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str, path: str, known: set[str],
               is_package: bool = False) -> list[Import]:
    """Every import statement in ``source``, each resolved to what it imports."""
    found: list[Import] = []

    def add(node: ast.stmt, target: str, runs: bool) -> None:
        found.append(Import(module, path, node.lineno, target, runs))

    def visit(node: ast.AST, runs: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name, runs)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(node, sub if sub in known else base, runs)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            runs = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runs)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, runs)

    visit(ast.parse(source, filename=path), True)
    return found


def _all_imports() -> list[Import]:
    modules = _modules()
    known = set(modules)
    out = []
    for name, path in modules.items():
        out += imports_of(path.read_text(encoding="utf-8"), name,
                          str(path.relative_to(ROOT)), known, path.name == "__init__.py")
    return out


IMPORTS = _all_imports()


def layer_name(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "curate":
        return None
    if len(parts) == 1:
        return "errors"  # curate/__init__.py sits with errors.py at the bottom
    top = parts[1]
    if top == "cli" or top.startswith("cli_"):
        return "cli"
    return top if top in LAYERS else None


def _internal(imp: Import) -> bool:
    return imp.target == "curate" or imp.target.startswith("curate.")


def _report(title: str, bad: list) -> str:
    return title + ":\n  " + "\n  ".join(str(b) for b in bad)


# --------------------------------------------------------------------------- the parser itself


def test_parser_sees_every_import_form():
    src = (
        "from __future__ import annotations\n"
        "import ray\n"
        "from typing import TYPE_CHECKING\n"
        "from curate import errors\n"
        "from curate import __version__\n"
        "from curate.core.engine import run\n"
        "from . import sibling\n"
        "from ..models import clip\n"
        "import curate.report.html as h\n"
        "if TYPE_CHECKING:\n"
        "    import torch\n"
        "class C:\n"
        "    from curate.vocab import load\n"
        "def f():\n"
        "    if True:\n"
        "        import open_clip.pretrained\n"
        "        from curate.driver import x\n"
    )
    known = {"curate", "curate.errors", "curate.core.engine", "curate.stages.sibling",
             "curate.models.clip", "curate.report.html", "curate.vocab", "curate.driver"}
    got = [(i.line, i.target, i.runs_at_import)
           for i in imports_of(src, "curate.stages.mod", "x.py", known)]
    assert got == [
        (1, "__future__", True), (2, "ray", True), (3, "typing", True),
        (4, "curate.errors", True), (5, "curate", True), (6, "curate.core.engine", True),
        (7, "curate.stages.sibling", True), (8, "curate.models.clip", True),
        (9, "curate.report.html", True), (11, "torch", False), (13, "curate.vocab", True),
        (16, "open_clip.pretrained", False), (17, "curate.driver", False),
    ]


# --------------------------------------------------------------------------- curate's layers


def test_every_module_has_a_layer():
    unmapped = [m for m in _modules() if layer_name(m) is None]
    assert not unmapped, f"modules outside every layer (add them to LAYERS): {unmapped}"


def test_no_module_imports_from_a_higher_layer():
    bad = []
    for imp in IMPORTS:
        if not _internal(imp):
            continue
        mine, theirs = layer_name(imp.module), layer_name(imp.target)
        assert theirs is not None, f"{imp}: no such curate module"
        if LAYERS[theirs] > LAYERS[mine]:
            bad.append(f"{imp}  [{mine} -> {theirs}]")
    assert not bad, _report("imports from a higher layer", bad)


def _cycles(at_import_only: bool) -> list[str]:
    """Every back edge of a DFS over curate's import graph, as the loop it closes."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in _modules()}
    for imp in IMPORTS:
        if _internal(imp) and imp.target != imp.module and imp.target in graph and (
                imp.runs_at_import or not at_import_only):
            graph[imp.module].setdefault(imp.target, imp)
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    stack: list[str] = []
    cycles = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt, imp in graph[node].items():
            if state.get(nxt) == 1:
                loop = stack[stack.index(nxt):] + [nxt]
                cycles.append(" -> ".join(loop) + f"  (closing edge: {imp})")
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            dfs(node)
    return cycles


def test_no_import_cycles_at_module_level():
    cycles = _cycles(at_import_only=True)
    assert not cycles, _report("module-level import cycles", cycles)


def test_no_import_cycles_at_any_depth():
    """Imports inside functions count too: two modules that need each other at run time
    are one module, or a third one is missing (a lazy import hides a cycle, it does not
    remove it)."""
    lazy = sum(1 for imp in IMPORTS if _internal(imp) and not imp.runs_at_import)
    assert lazy  # the parser sees the function-local imports (there are many)
    cycles = _cycles(at_import_only=False)
    assert not cycles, _report("import cycles (at any depth)", cycles)


def test_report_renders_only_the_data_it_is_given():
    bad = [imp for imp in IMPORTS
           if imp.module.startswith("curate.report")
           and imp.target.startswith(("curate.core", "curate.stages", "curate.driver"))]
    assert not bad, _report("curate.report must not read runs or call stages", bad)


# --------------------------------------------------------------------------- third-party imports


@pytest.mark.parametrize("package", sorted(RESTRICTED))
def test_heavy_imports_stay_in_their_layer(package):
    allowed, why = RESTRICTED[package]
    bad = [imp for imp in IMPORTS
           if imp.target.split(".")[0] == package and not imp.path.startswith(allowed)]
    assert not bad, _report(f"{package} imported outside {', '.join(allowed)} ({why})", bad)


# --------------------------------------------------------------------------- size


def test_modules_are_at_most_400_lines():
    too_long = []
    for path in _modules().values():
        rel = str(path.relative_to(ROOT))
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel not in LINE_EXEMPT:
            too_long.append(f"{rel}: {n} lines")
    assert not too_long, _report(f"modules over {MAX_LINES} lines (split them)", too_long)


def test_line_exemptions_are_still_needed():
    stale = [rel for rel in LINE_EXEMPT
             if not (ROOT / rel).is_file()
             or len((ROOT / rel).read_text(encoding="utf-8").splitlines()) <= MAX_LINES]
    assert not stale, f"remove these from LINE_EXEMPT: {stale}"
