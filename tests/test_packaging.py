"""A non-editable install finds everything it needs: the default vocabulary, the bundled
model configs, the report templates and the example pipeline are package data, so
`curate example` runs from any working directory (how Ray worker images are built)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def _wheel(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp), str(ROOT)], check=True, cwd=tmp)
    return next(tmp.glob("curate-*.whl"))


def test_wheel_holds_package_data_and_example_runs_elsewhere(tmp_path):
    wheel = _wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("curate/vocab/data/default_vocabulary.txt.gz",
                   "curate/models/configs/curate-tiny-vit.json",
                   "curate/report/templates/report.html", "curate/app/example.yaml"):
        assert needed in names, needed
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--target", str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site),
               CURATE_RAY_TMP=tempfile.mkdtemp(prefix="pkg-", dir="/tmp"),
               CURATE_EXAMPLE_PORT=str(free_port()))
    code = ("import curate, sys; assert curate.__file__.startswith(sys.argv[1]), "
            "curate.__file__; from curate.cli import main; sys.argv = ['curate', 'example', "
            "'--out', 'X']; main()")
    r = subprocess.run([sys.executable, "-c", code, str(site)], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (elsewhere / "X" / "reports" / "report.html").is_file()
    assert list((elsewhere / "X" / "curated").glob("part-*.parquet"))
