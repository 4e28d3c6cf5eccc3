"""``curate publish RUN DIR``: lay out a finished run's curated set as a folder that can be
pushed to the Hugging Face Hub as it is (``hf upload USER/NAME DIR --repo-type dataset``).

Layout: ``DIR/README.md`` (the report's dataset card, ``reports/README.md``, with
``configs`` pointing at ``data/*.parquet`` and a line saying how it was published),
``DIR/data/part-NNNNN.parquet`` (emit's shards, copied byte for byte: images inside) and,
with ``webdataset``, ``DIR/wds/NNNNN.tar`` (emit's tars). Nothing here uses the network.

Refused (exit 2, one line) when the run is not finished (run.json has no ``finished``, or a
stage is not ``done``), when the report is older than emit, when takedowns are pending (the
takedown and denylist rules' digest, :func:`curate.stages._denylist.rules_version`, differs
from the one emit recorded, or else from the one the report recorded when it wrote the
card), or when DIR is not empty (unless ``overwrite``: then README.md, data/ and wds/ are
replaced and anything else in DIR, such as a Hub clone's ``.git``, is left alone).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from curate import __version__
from curate.core.io import list_shards
from curate.core.rundir import RunDir, now, step_info
from curate.errors import InputError
from curate.stages._denylist import rules_version
from curate.stages._report_card import CARD, published_card


def _refuse(run: str, why: str) -> InputError:
    return InputError(f"publish {run}: {why}")


def check(run: str) -> dict[str, Any]:
    """The run's emit and report records, or an InputError saying why it cannot be
    published."""
    rd = RunDir(run)
    if not rd.fs.exists(rd.path("run.json")):
        raise _refuse(run, "not a run directory (no run.json)")
    m = rd.load_manifest()
    if not m.get("finished"):
        raise _refuse(run, "the run has not finished (run.json has no 'finished'); "
                      "rerun it to the end")
    stages = m.get("stages", {})
    names = (m.get("config") or {}).get("stages") or list(stages)
    for name in names:
        status = (stages.get(name) or {}).get("status", "pending")
        if status != "done":
            raise _refuse(run, f"stage {name} is {status}, not done; rerun the pipeline")
    emit = next((n for n in names if stages[n].get("kind") == "emit"), None)
    report = next((n for n in names if stages[n].get("kind") == "report"), None)
    if emit is None or report is None:
        raise _refuse(run, f"the pipeline has no {'emit' if emit is None else 'report'} "
                      "stage; add it and rerun")
    e, r = stages[emit], stages[report]
    if str(r.get("finished", "")) < str(e.get("finished", "")):
        raise _refuse(run, f"the report ({report}) is older than {emit}; rerun the pipeline")
    card = rd.path(r.get("folder", "reports"), CARD)
    if not rd.fs.exists(card):
        raise _refuse(run, f"no dataset card ({card}); rerun {report}")
    applied = step_info(e, "write").get("rules_version")
    if applied is None:
        applied = step_info(r, "count").get("rules_version")
    if applied is None:
        raise _refuse(run, "the rules emit applied are not recorded; rerun the pipeline")
    if rules_version(rd) != applied:
        raise _refuse(run, f"takedowns pending: the takedown/denylist rules changed since "
                      f"{emit} last ran; rerun the pipeline (emit and report) first")
    return {"emit": emit, "emit_folder": e.get("folder", "curated"), "card": card,
            "report": report}


def publish(run: str, out: str, webdataset: bool = False, overwrite: bool = False
            ) -> dict[str, Any]:
    """Write the publishable folder; returns what was written."""
    info = check(run)
    rd = RunDir(run)
    dest = Path(out)
    ours = [dest / CARD, dest / "data", dest / "wds"]
    if dest.exists() and not dest.is_dir():
        raise _refuse(run, f"{out} is a file, not a folder")
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise _refuse(run, f"{out} is not empty; give --overwrite to replace its "
                          "README.md, data/ and wds/")
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    folder = info["emit_folder"]
    shards = list_shards(rd.fs, rd.path(folder))
    if not shards:
        raise _refuse(run, f"{folder}/ holds no Parquet shards")
    tars: list[str] = []
    if webdataset:
        wds = rd.path(folder, "wds")
        tars = sorted(p.rsplit("/", 1)[-1] for p in rd.fs.glob(wds + "/*.tar"))
        if not tars:
            raise _refuse(run, f"{folder}/wds/ holds no tars (set emit.webdataset: true and "
                          "rerun emit)")
    (dest / "data").mkdir(parents=True, exist_ok=True)
    for name in shards:
        _copy(rd, rd.path(folder, name), dest / "data" / name)
    if tars:
        (dest / "wds").mkdir(exist_ok=True)
        for name in tars:
            _copy(rd, rd.path(folder, "wds", name), dest / "wds" / name)
    with rd.fs.open(info["card"], "r", encoding="utf-8") as f:
        text = f.read()
    where = rd.url if "://" in rd.url else Path(rd.url).resolve()
    note = (f"Published with `curate publish` (curate {__version__}) on {now()} from the run "
            f"directory `{where}`: `data/` holds its {len(shards)} curated Parquet shard(s) "
            "copied unchanged (images inside, in the `image` column)"
            + (f", `wds/` its {len(tars)} WebDataset tar(s)" if tars else "") + ".")
    (dest / CARD).write_text(published_card(text, note), encoding="utf-8")
    return {"dir": str(dest), "shards": len(shards), "tars": len(tars)}


def _copy(rd: RunDir, src: str, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    with rd.fs.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)
    tmp.replace(dst)
