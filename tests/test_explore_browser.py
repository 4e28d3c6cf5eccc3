"""``curate explore``'s pages in a real browser (Playwright driving Debian's chromium): the
search grid, the filter view, a pair, the cluster browser, an upload and an export, each
checked against the run's own files. Under ``CI=true`` a missing chromium fails; elsewhere
it skips. With ``CURATE_EXPLORE_SCREENS=DIR`` each page is also saved as a screenshot."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
from explore_helpers import Served, chromium, indexed_copy, read_parts, screens_dir


@pytest.fixture(scope="module")
def site(example_run, tmp_path_factory):
    exe = chromium()
    from playwright.sync_api import sync_playwright

    run = indexed_copy(example_run[0], tmp_path_factory.mktemp("explore_ui") / "run")
    s = Served(run)
    s.run = run
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1300, "height": 900}, accept_downloads=True)
    yield s, page
    browser.close()
    pw.stop()
    s.close()


def _shot(page, name: str) -> None:
    d = screens_dir()
    if d is not None:  # tall enough to show the forms and the first rows of the grid
        page.set_viewport_size({"width": 1300, "height": 1500})
        page.screenshot(path=str(d / f"explore_{name}.png"), full_page=False)
        page.set_viewport_size({"width": 1300, "height": 900})


def _go(page, url: str) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")


def _tiles(page, within: str = "main") -> list[str]:
    return page.eval_on_selector_all(f"{within} .grid .tile", "els => els.map(e => e.dataset.uid)")


def _first_image_loaded(page, within: str = ".grid") -> bool:
    return page.eval_on_selector(f"{within} img", "i => i.complete && i.naturalWidth > 0")


def test_search_grid(site):
    s, page = site
    uid = read_parts(s.run / "curated", ["uid"])["uid"][0].as_py()
    _go(page, f"{s.base}/?uid={uid}&k=24")
    _, api = s.json(f"/api/neighbors?uid={uid}&k=24")
    assert _tiles(page, ".results") == [n["uid"] for n in api["neighbors"]]
    assert "24 nearest to pair" in page.inner_text(".results h2")
    assert _first_image_loaded(page) and page.inner_text(".query-pair").strip()
    _shot(page, "search")


def test_filter_view(site):
    s, page = site
    _go(page, s.base + "/")
    page.select_option("select[name=reason]", "over_cluster_quota")
    page.fill("input[name=min_clip_score]", "0.2")
    page.click("text=Show")
    page.wait_for_load_state("networkidle")
    assert "reason=over_cluster_quota" in page.url and "caption=" not in page.url
    prune = read_parts(s.run / "prune", ["uid", "reason"])
    scores = read_parts(s.run / "scores", ["uid", "clip_score"])
    high = set(scores.filter(pc.greater_equal(scores["clip_score"], 0.2))["uid"].to_pylist())
    want = sorted(set(prune.filter(pc.equal(prune["reason"], "over_cluster_quota"))["uid"]
                      .to_pylist()) & high)
    assert _tiles(page) == want and want
    assert all("prune: over_cluster_quota" in t for t in
               page.eval_on_selector_all(".grid .tile .chain", "els => els.map(e => e.innerText)"))
    _shot(page, "filter")


def test_pair_page(site):
    s, page = site
    pool = read_parts(s.run / "pool", ["uid", "caption"])
    uid = read_parts(s.run / "curated", ["uid"])["uid"][2].as_py()
    caption = pool.filter(pc.equal(pool["uid"], uid))["caption"][0].as_py()
    _go(page, f"{s.base}/pair/{uid}")
    assert page.inner_text("h1") == caption
    chain = page.eval_on_selector_all(".chain.long li", "els => els.map(e => e.innerText)")
    assert chain == [f"✓ kept by {st}" for st in ("download", "score", "balance", "prune")]
    views = page.eval_on_selector_all("table.kv caption", "els => els.map(e => e.innerText)")
    assert {"pool", "images", "scores", "matches", "balance", "prune"} <= set(views)
    assert len(_tiles(page, ".neighbours")) == 12 and uid not in _tiles(page, ".neighbours")
    assert _first_image_loaded(page, ".big")
    _shot(page, "pair")


def test_cluster_browser(site):
    s, page = site
    clusters = read_parts(s.run / "prune", ["uid", "cluster_id"])
    import pyarrow.parquet as pq

    table = pq.read_table(s.run / "prune" / "clusters.parquet")
    _go(page, f"{s.base}/clusters")
    rows = page.eval_on_selector_all("table.clusters tbody tr", "els => els.length")
    assert rows == table.num_rows
    sizes = page.eval_on_selector_all("table.clusters tbody tr td:nth-child(3)",
                                      "els => els.map(e => Number(e.innerText))")
    assert sizes == sorted(table["size"].to_pylist(), reverse=True)
    _shot(page, "clusters")
    cid = int(page.inner_text("table.clusters tbody tr td a"))
    page.click(f"a[href='/cluster/{cid}']")
    page.wait_for_load_state("networkidle")
    members = set(clusters.filter(pc.equal(clusters["cluster_id"], cid))["uid"].to_pylist())
    final = set(read_parts(s.run / "curated", ["uid"])["uid"].to_pylist())
    kept = _tiles(page, ".sides section:first-child")
    dropped = _tiles(page, ".sides section:last-child")
    assert set(kept) == members & final and set(dropped) == members - final
    _shot(page, "cluster")


def test_upload_search(site, tmp_path):
    s, page = site
    uid = read_parts(s.run / "curated", ["uid"])["uid"][5].as_py()  # the index: kept pairs
    images = read_parts(s.run / "images", ["uid", "image", "format"])
    images = images.filter(pc.equal(images["uid"], uid))
    data = images["image"][0].as_py()
    path = tmp_path / f"query.{images['format'][0].as_py()}"
    path.write_bytes(data)
    _go(page, f"{s.base}/?k=6")
    page.set_input_files("input[type=file]", str(path))
    page.click("text=search by image")
    page.wait_for_load_state("networkidle")
    assert "nearest to the uploaded image" in page.inner_text(".results h2")
    assert uid in _tiles(page)[:3]


def test_export_from_a_search(site):
    s, page = site
    uid = read_parts(s.run / "curated", ["uid"])["uid"][3].as_py()
    _go(page, f"{s.base}/?uid={uid}&k=6")
    shown = _tiles(page, ".results")
    page.click("text=Export these as a subset")
    page.wait_for_load_state("networkidle")
    assert page.inner_text(".facts").startswith("6 pairs")
    _shot(page, "export")
    with page.expect_download() as dl:
        page.click("button:has-text('subset-uids.txt')")
    text = open(dl.value.path(), encoding="utf-8").read()
    assert text.splitlines() == shown
