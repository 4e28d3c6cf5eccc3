"""``curate explore``: how long a 100-result grid takes to load, and the server's memory.

On the offline example run (made in a temporary folder unless ``--run`` names an indexed
one; then ``curate index`` on it), the app is served on loopback from a thread of this
process, and for each of ``--reps`` rounds, with the thumbnail cache emptied first (cold):

- the filter grid ``/?limit=100&min_width=1`` (pairs with an image): its HTML (DuckDB
  query + the 100 thumbnails made in one pass over their shards), then its 100
  ``/thumb/<uid>`` images fetched 6 at a time, as a browser does;
- the search grid ``/?uid=U&k=100`` the same way;
- in Debian's chromium (Playwright), when it is installed: navigation to ``load`` with
  every image decoded;
- ``/api/neighbors?uid=U&k=10``.

A second fetch of each grid (thumbnails cached) is reported as "warm". Prints the medians
and the process's peak RSS (server, client and browser driver together;
chromium's own processes are not counted).

    .venv/bin/python bench/bench_explore.py [--run RUN] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
for _k, _v in (("NO_ALBUMENTATIONS_UPDATE", "1"), ("WANDB_MODE", "disabled"),
               ("RAY_AUTH_MODE", "disabled"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_k, _v)

from _common import machine, peak_rss_mb  # noqa: E402


def _run(args: argparse.Namespace, tmp: Path) -> str:
    from typer.testing import CliRunner

    from curate.cli import app

    if args.run:
        return args.run
    from helpers import free_port

    from curate.app.example import run_example
    from curate.core import engine

    os.environ.setdefault("CURATE_RAY_TMP", str(tmp / "ray"))
    os.environ.setdefault("CURATE_EXAMPLE_PORT", str(free_port()))
    run = str(tmp / "run")
    run_example(run, None, [])
    engine.shutdown()
    r = CliRunner().invoke(app, ["index", run])
    assert r.exit_code == 0, r.output
    return run


def _grid(s, path: str) -> tuple[float, float, int]:
    """(seconds for the HTML, seconds until every thumbnail arrived, thumbnails)."""
    import re

    t0 = time.perf_counter()
    status, body, _ = s.get(path)
    t1 = time.perf_counter()
    assert status == 200, body[:300]
    thumbs = re.findall(r'src="(/thumb/[^"]+)"', body.decode())
    with ThreadPoolExecutor(6) as pool:
        assert all(r[0] == 200 for r in pool.map(s.get, thumbs))
    return t1 - t0, time.perf_counter() - t0, len(thumbs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an indexed run (default: the example, made here)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from explore_helpers import Served

    with tempfile.TemporaryDirectory(prefix="bench-explore-") as tmp:
        run = _run(args, Path(tmp))
        s = Served(run)
        uid = s.json("/api/pairs?limit=1&kept=kept")[1]["rows"][0]["uid"]
        res: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for name, path in (("filter", "/?limit=100&min_width=1"),
                               ("search", f"/?uid={uid}&k=100")):
                s.ex.thumbs._cache.clear()
                html, total, n = _grid(s, path)
                assert n >= 100, (name, n)  # search: the query pair's tile too
                res.setdefault(f"{name} html", []).append(html)
                res.setdefault(f"{name} html + 100 thumbs", []).append(total)
                html, total, n = _grid(s, path)  # again: thumbnails cached
                res.setdefault(f"{name} html + 100 thumbs, warm", []).append(total)
            t0 = time.perf_counter()
            s.json(f"/api/neighbors?uid={uid}&k=10")
            res.setdefault("api neighbors k=10", []).append(time.perf_counter() - t0)
        exe = shutil.which("chromium")
        if exe:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
                for _ in range(args.reps):
                    s.ex.thumbs._cache.clear()
                    # tall enough that no thumbnail waits for a scroll (they load lazily)
                    page = browser.new_page(viewport={"width": 1300, "height": 8000})
                    t0 = time.perf_counter()
                    page.goto(f"{s.base}/?limit=100&min_width=1", wait_until="load")
                    page.evaluate("Promise.all(Array.from(document.images).map(i => "
                                  "i.decode().catch(() => null)))")
                    res.setdefault("chromium: filter grid to load, images decoded",
                                   []).append(time.perf_counter() - t0)
                    page.close()
                browser.close()
        s.close()
    what = args.run or "the example (243 pairs)"
    print(f"curate explore, 100-result grid, {machine()}; run {what}; medians of {args.reps}, "
          "thumbnail cache cold")
    for k, v in res.items():
        print(f"  {k:<48} {1000 * statistics.median(v):8.1f} ms")
    print(f"  peak RSS (this process: server + client) {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
