"""The report and the audit page never show what a safety rule removed, and blur what may be
unsafe.

A pool brings image bytes and OpenAI-B/32-sized image embeddings whose punsafe (LAION's NSFW
head, bundled) spreads over 0..1; the pipeline is nsfw (drops punsafe > 0.9) → language
(drops the French captions) → emit → report. Every thumbnail on the pages is decoded and
traced back to the pool image it came from (each image has its own colour): none may be a
pair nsfw dropped; a thumbnail is blurred exactly when its pair's punsafe is above 0.5.
punsafe comes from the nsfw stage's own output; its equality with LAION's module is
tests/test_nsfw.py's job.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import base_config
from helpers import read_parts
from PIL import Image, ImageDraw

from curate.driver import run_pipeline

HEAD = "curate/models/heads/clip_ViT-B-32_openai_binary_nsfw_head.pth"
N = 48
EN = "a photo of a red bicycle leaning on a wall near the old harbour"
FR = "une photo d'un vélo rouge appuyé contre un mur près du vieux port"


def _colour(i: int) -> tuple[int, int, int]:
    return ((i * 53) % 150 + 20, (i * 97) % 150 + 20, (i * 29) % 150 + 20)


def _image(i: int) -> bytes:
    img = Image.new("RGB", (96, 72), _colour(i))
    ImageDraw.Draw(img).rectangle((20, 15, 70, 55), outline=(255, 255, 255), width=3)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _embeddings(n: int) -> np.ndarray:
    """From a real CLIP embedding (punsafe ~0) towards a point the head calls unsafe: a few
    steps up the gradient of its logit, then mixtures in between."""
    from pathlib import Path

    s = {k: v.float() for k, v in torch.load(Path(__file__).parents[1] / HEAD,
                                              weights_only=True).items()}

    def logit(x):
        x = x / x.norm(dim=1, keepdim=True)
        h = (x - s["norm.mean"]) / (s["norm.variance"].sqrt() + 1e-10)
        h = torch.relu(h @ s["linear_1.weight"].T + s["linear_1.bias"])
        h = torch.relu(h @ s["linear_2.weight"].T + s["linear_2.bias"])
        return (h @ s["linear_3.weight"].T + s["linear_3.bias"])[:, 0]

    base = np.load(Path(__file__).parent / "data" / "laion_aesthetic" / "vit_b_32" /
                   "rating5.npy")[:1]
    x = torch.tensor(base, dtype=torch.float32)
    for _ in range(200):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(logit(x).sum(), x)
        x = (x + 0.02 * g / g.norm()).detach()
        x = x / x.norm()
    end = x.numpy()

    def p_at(t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            mix = torch.tensor((1 - t[:, None]) * base + t[:, None] * end, dtype=torch.float32)
            return torch.sigmoid(logit(mix)).numpy()

    # bisect the mixture weight for punsafe targets spread over (0, 1)
    want = np.linspace(0.02, 0.98, n)
    lo, hi = np.zeros(n), np.ones(n)
    for _ in range(40):
        mid = (lo + hi) / 2
        up = p_at(mid) < want
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    t = ((lo + hi) / 2).astype(np.float32)[:, None]
    return ((1 - t) * base + t * end).astype(np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("safety")
    x = _embeddings(N)
    caps = [f"{EN if i % 2 else FR} #{i:02d}" for i in range(N)]
    pq.write_table(pa.table({
        "caption": caps, "image": pa.array([_image(i) for i in range(N)], pa.binary()),
        "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 512)}),
        tmp / "pool.parquet")
    cfg = base_config(stages=["nsfw", "language", "emit", "report"], pool={"shard_size": 16},
                      nsfw={"model": "vit_b_32", "max_punsafe": 0.9},
                      language={"languages": ["en"]}, emit={"rows_per_shard": 100})
    out = str(tmp / "run")
    run_pipeline(cfg, out, pool=str(tmp / "pool.parquet"))
    nsfw = read_parts(tmp / "run" / "nsfw")
    pool = read_parts(tmp / "run" / "pool")
    index = {u: int(c.rsplit("#", 1)[1]) for u, c in zip(pool["uid"].to_pylist(),
                                                         pool["caption"].to_pylist())}
    p = {index[u]: v for u, v in zip(nsfw["uid"].to_pylist(), nsfw["punsafe"].to_pylist())}
    return {"out": out, "cfg": cfg, "pool": str(tmp / "pool.parquet"), "p": p,
            "dropped": {i for i, v in p.items() if v > 0.9}}


def _thumbs(html: str) -> list[tuple[int, bool]]:
    """(pool index of the image, blurred?) of every data:image/jpeg thumbnail on a page."""
    out = []
    for uri in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html):
        img = Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB")
        a = np.asarray(img, np.float64)
        mean = a.reshape(-1, 3).mean(0)
        i = int(np.argmin([np.abs(_mean_of(k) - mean).sum() for k in range(N)]))
        # the white outline survives in a plain thumbnail, not in a blurred one (every
        # channel of the background is at most 170)
        out.append((i, float(a.sum(axis=2).max()) < 600))
    return out


_MEANS: dict[int, np.ndarray] = {}


def _mean_of(k: int) -> np.ndarray:
    if k not in _MEANS:
        _MEANS[k] = np.asarray(Image.open(io.BytesIO(_image(k))).convert("RGB"),
                               np.float64).reshape(-1, 3).mean(0)
    return _MEANS[k]


def test_inputs_span_the_cut_and_the_blur_line(run):
    p = np.array(list(run["p"].values()))
    assert (p > 0.9).sum() >= 3 and ((p > 0.5) & (p <= 0.9)).sum() >= 2 and (p < 0.5).sum() >= 3


def test_report_never_shows_what_nsfw_dropped_and_blurs_the_unsafe(run):
    html = open(f"{run['out']}/reports/report.html", encoding="utf-8").read()
    thumbs = _thumbs(html)
    assert thumbs, "the language sheet shows thumbnails"
    for i, blurred in thumbs:
        assert i not in run["dropped"], f"pair {i} (punsafe {run['p'][i]:.3f}) is shown"
        assert blurred == (run["p"][i] > 0.5), (i, run["p"][i], blurred)
    assert any(b for _, b in thumbs) and not all(b for _, b in thumbs)
    # the nsfw sheet is a count, with no figure; the safety section has the numbers
    sheet = html.split("nsfw: <code>nsfw</code>", 1)[1].split("<h3>", 1)[0]
    assert "never shown" in sheet and "<figure" not in sheet
    assert 'id="safety"' in html and "punsafe &gt; 0.5" in html
    for i in run["dropped"]:  # not even the caption of a dropped pair
        assert f"#{i:02d}" not in html


def test_audit_withholds_safety_drops_and_blurs(run):
    from curate.app.audit import page, sample

    items = sample(run["out"], "nsfw", 20)
    assert len(items) == len(run["dropped"])
    assert all(it["withheld"] and it["thumb"] is None for it in items)
    assert "data:image" not in page(run["out"], "nsfw", items)
    items = sample(run["out"], "language_not_selected", 30)
    seen = dict(_thumbs(page(run["out"], "language_not_selected", items)))
    assert seen and not set(seen) & run["dropped"]
    for i, blurred in seen.items():
        assert blurred == (run["p"][i] > 0.5)
    assert {it["blurred"] for it in items} == {True, False}


def test_show_sensitive_unblurs_kept_pairs_but_never_the_dropped(run, tmp_path):
    from curate.stages.registry import parse_pipeline

    data = run["cfg"].dump()
    data["report"] = {"show_sensitive": True}
    run_pipeline(parse_pipeline(data), run["out"], pool=run["pool"])
    html = open(f"{run['out']}/reports/report.html", encoding="utf-8").read()
    thumbs = _thumbs(html)
    assert thumbs and not any(b for _, b in thumbs)
    assert not {i for i, _ in thumbs} & run["dropped"]
    assert "never shown" in html


def test_which_drops_count_as_a_safety_rule():
    from curate.stages.registry import parse_pipeline

    head = {"kind": "classifier", "head": "h.pth", "threshold": 0.5}
    p = parse_pipeline({"stages": ["download", "nsfw", "toxicity", "nsfw_head", "watermark",
                                   "language"],
                        "nsfw_head": head, "watermark": {**head, "sensitive": False},
                        "language": {"languages": ["en"]}})
    assert p.sensitive() == {("download", "denylisted"), ("nsfw", "nsfw"), ("nsfw", "violent"),
                             ("toxicity", "toxic"),
                             ("nsfw_head", "classifier_above_threshold"),
                             ("nsfw_head", "classifier_below_threshold")}


def test_every_bundled_pipeline_parses():
    """pipelines/laion_safety.yaml (and every other bundled file) stays valid as kinds and
    keys change."""
    from pathlib import Path

    from curate.stages.registry import load_pipeline

    files = sorted((Path(__file__).parents[1] / "pipelines").glob("*.yaml"))
    assert any(f.name == "laion_safety.yaml" for f in files)
    for f in files:
        assert load_pipeline(f).stages, f
    safety = load_pipeline(files[[f.name for f in files].index("laion_safety.yaml")])
    assert {("download", "denylisted"), ("nsfw", "nsfw"), ("toxicity", "toxic")} <= \
        safety.sensitive()
