"""`curate publish RUN DIR` (curate/app/publish.py): a folder the Hub takes as it is, that
`datasets.load_dataset(DIR)` and `webdataset.WebDataset(urls)` read with no other
arguments; refusals for unfinished runs, pending takedowns and a non-empty DIR."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from test_card import example
from typer.testing import CliRunner

from curate.cli import app

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def run(example_run):
    return example(example_run)


def _uids(folder) -> list[str]:
    return sorted(u for f in sorted(folder.glob("*.parquet"))
                  for u in pq.read_table(f, columns=["uid"])["uid"].to_pylist())


def _publish(*args: str):
    return CliRunner().invoke(app, ["publish", *map(str, args)])


def test_published_folder_loads_with_no_arguments(run, tmp_path):
    import datasets
    import webdataset
    from huggingface_hub import DatasetCard

    out, m = run
    dest = tmp_path / "pub"
    r = _publish(out, dest, "--webdataset")
    assert r.exit_code == 0, r.output
    assert "upload" in r.output
    ds = datasets.load_dataset(str(dest))
    assert list(ds) == ["train"]
    assert sorted(ds["train"]["uid"]) == _uids(out / "curated") == _uids(dest / "data")
    card = DatasetCard.load(dest / "README.md")
    assert card.data.to_dict()["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/*.parquet"}]
    assert "Published with `curate publish`" in card.text
    urls = sorted(str(p) for p in (dest / "wds").glob("*.tar"))
    assert len(urls) == len(list((out / "curated" / "wds").glob("*.tar")))
    keys = [json.loads(s["json"])["uid"] for s in webdataset.WebDataset(urls)]
    assert sorted(keys) == _uids(out / "curated")
    # the body is the run's card: same numbers
    src = (out / "reports" / "README.md").read_text()
    assert src.split("<!-- curate:numbers -->")[1] == card.text.split(
        "<!-- curate:numbers -->")[1]


def test_refuses_a_non_empty_dir_unless_overwrite(run, tmp_path):
    out, _ = run
    dest = tmp_path / "pub"
    dest.mkdir()
    (dest / ".gitattributes").write_text("*.parquet filter=lfs\n")
    r = _publish(out, dest)
    assert r.exit_code == 2 and "not empty" in r.output
    r = _publish(out, dest, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (dest / ".gitattributes").exists() and (dest / "README.md").exists()
    assert not (dest / "wds").exists()


def _copy(out, tmp_path, edit=None):
    run = tmp_path / "run"
    shutil.copytree(out, run)
    if edit:
        m = json.loads((run / "run.json").read_text())
        edit(m)
        (run / "run.json").write_text(json.dumps(m))
    return run


@pytest.mark.parametrize("edit,why", [
    (lambda m: m.pop("finished"), "has not finished"),
    (lambda m: m["stages"]["prune"].update(status="failed"), "stage prune is failed"),
    (lambda m: m["stages"]["report"].update(finished="2000-01-01T00:00:00+00:00"),
     "older than emit"),
])
def test_refuses_an_unfinished_run(run, tmp_path, edit, why):
    copy = _copy(run[0], tmp_path, edit)
    r = _publish(copy, tmp_path / "pub")
    assert r.exit_code == 2 and why in r.output, r.output
    assert not (tmp_path / "pub").exists()


def test_refuses_pending_takedowns(run, tmp_path):
    from curate.app.takedown import takedown

    copy = _copy(run[0], tmp_path)
    victim = _uids(copy / "curated")[0]
    (tmp_path / "uids.txt").write_text(victim + "\n")
    takedown(str(copy), {"uid": str(tmp_path / "uids.txt")}, "test")
    r = _publish(copy, tmp_path / "pub")
    assert r.exit_code == 2 and "takedowns pending" in r.output, r.output
