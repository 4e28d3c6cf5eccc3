"""score as a pipeline stage: equals a direct open_clip computation; filters; failures."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import base_config, drawn_image
from typer.testing import CliRunner

from curate.driver import run_pipeline

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32,
                   "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("model")
    cfg = d / "tiny-score.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("tiny-score", pretrained=None)
    ckpt = d / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return str(cfg), str(ckpt)


def _pool(tmp_path, n=30, corrupt=(3,)) -> str:
    images = [drawn_image(i, (48 + 7 * i, 40 + 5 * (i % 4)), ["jpg", "png", "webp"][i % 3])
              for i in range(n)]
    for i in corrupt:
        images[i] = images[i][:40]  # truncated garbage
    caps = [f"a drawing of shape {i} in colour" for i in range(n)]
    caps[7] = "x"  # one word: dropped by the basic filter
    p = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://example.invalid/{i}.jpg" for i in range(n)],
                             "caption": caps, "image": images}), p)
    return str(p)


def _cfg(tiny_ckpt, **score):
    cfg_path, ckpt = tiny_ckpt
    section = {"model_config": cfg_path, "pretrained": ckpt, "batch_size": 8,
               "basic": {"min_caption_words": 2}, **score}
    return base_config(stages=["score"], score=section, pool={"shard_size": 11})


@pytest.fixture(scope="module")
def exact(tmp_path_factory, tiny_ckpt, ray_session):
    """One run of the default ("exact") pipeline on the default pool, shared by the tests
    that only read it (each model run starts an actor that imports torch: seconds of CPU).
    Returns (pool, run folder); tests write their own runs elsewhere and never modify it."""
    d = tmp_path_factory.mktemp("exact")
    pool = _pool(d)
    run_pipeline(_cfg(tiny_ckpt), str(d / "run"), pool=pool)
    return pool, d / "run"


def _scores(out) -> pa.Table:
    s = pq.read_table(f"{out}/scores")
    p = pq.read_table(f"{out}/pool", columns=["uid", "caption", "image"])
    idx = pc.index_in(s["uid"], value_set=p["uid"].combine_chunks())
    return s.append_column("caption", pc.take(p["caption"], idx)).append_column(
        "image", pc.take(p["image"], idx))


def test_scores_equal_direct_open_clip(exact, tiny_ckpt):
    import open_clip
    import torch
    from PIL import Image

    out = exact[1]
    t = _scores(out).sort_by("uid")
    cfg_path, ckpt = tiny_ckpt
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-score", pretrained=ckpt)
    model.eval()
    tok = open_clip.get_tokenizer("tiny-score")
    rows = t.to_pylist()
    reasons = {r["reason"] for r in rows if not r["kept"]}
    assert reasons == {"image_undecodable", "caption_too_few_words"}, reasons
    details = {r["detail"] for r in rows if r["reason"] == "image_undecodable"}
    assert all(d.startswith("image decode failed") for d in details), details
    scored = [r for r in rows if r["clip_score"] is not None]
    assert len(scored) == len(rows) - 2
    with torch.no_grad():
        imgs = torch.stack([preprocess(Image.open(io.BytesIO(r["image"]))) for r in scored])
        ie = model.encode_image(imgs)
        te = model.encode_text(tok([r["caption"] for r in scored]))
        ie = (ie / ie.norm(dim=-1, keepdim=True)).numpy()
        te = (te / te.norm(dim=-1, keepdim=True)).numpy()
    got_ie = np.array([r["image_emb"] for r in scored], np.float32)
    got_te = np.array([r["text_emb"] for r in scored], np.float32)
    np.testing.assert_allclose(got_ie, ie, atol=2e-3)  # stored as float16
    np.testing.assert_allclose(got_te, te, atol=2e-3)
    direct = (ie * te).sum(1)
    np.testing.assert_allclose([r["clip_score"] for r in scored], direct, atol=1e-4)
    # clip_score equals the dot product of the stored embeddings (fp16 rounding)
    np.testing.assert_allclose((got_ie * got_te).sum(1), [r["clip_score"] for r in scored],
                               atol=3e-3)
    schema = pq.read_schema(next((out / "scores").glob("part-*.parquet")))
    assert schema.field("image_emb").type == pa.list_(pa.float16(), 32)


def test_top_fraction_keeps_exactly_global_top_k(tmp_path, tiny_ckpt, ray_session):
    out = tmp_path / "run"
    # over the survivors: the k best of the pairs that passed the basic filter and decoded
    # (the default, over the whole pool, is tests/test_top_fraction_pool.py)
    run_pipeline(_cfg(tiny_ckpt, filter={"top_fraction": 0.3, "top_fraction_of": "survivors",
                                         "top_fraction_rule": "exact_k"}),
                 str(out), pool=_pool(tmp_path))
    t = pq.read_table(f"{out}/scores")
    eligible = t.filter(pc.invert(pc.is_null(t["clip_score"])))
    k = round(0.3 * eligible.num_rows)
    kept = t.filter(t["kept"])
    assert kept.num_rows == k
    best = sorted(eligible["clip_score"].to_pylist(), reverse=True)[:k]
    assert sorted(kept["clip_score"].to_pylist(), reverse=True) == best
    dropped = t.filter(pc.invert(t["kept"]))["reason"].to_pylist()
    assert set(dropped) <= {"below_top_fraction", "image_undecodable", "caption_too_few_words"}
    assert "below_top_fraction" in dropped


def test_top_fraction_over_the_pool_scores_basic_filtered_pairs(tmp_path, tiny_ckpt,
                                                               ray_session):
    """The default cut ranks every pair that reached score: the one-word caption is scored
    with the model too (and stays dropped as caption_too_few_words)."""
    out = tmp_path / "run"
    run_pipeline(_cfg(tiny_ckpt, filter={"top_fraction": 0.3}), str(out), pool=_pool(tmp_path))
    t = _scores(out)
    short = t.filter(pc.equal(t["caption"], "x")).to_pylist()[0]
    assert short["clip_score"] is not None and short["reason"] == "caption_too_few_words"
    ranked = t.filter(pc.invert(pc.is_null(t["clip_score"])))
    assert ranked.num_rows == t.num_rows - 1  # all but the undecodable image
    k = round(0.3 * ranked.num_rows)
    best = sorted(ranked.to_pylist(), key=lambda r: -r["clip_score"])[:k]
    assert {r["uid"] for r in t.filter(t["kept"]).to_pylist()} == {
        r["uid"] for r in best if r["caption"] != "x"}


def test_min_score_keeps_at_least_threshold(tmp_path, tiny_ckpt, exact):
    pool, out = exact
    s = pq.read_table(f"{out}/scores")["clip_score"].drop_null().to_numpy()
    thr = float(np.median(s))
    out2 = tmp_path / "run1"
    run_pipeline(_cfg(tiny_ckpt, filter={"min_score": thr}), str(out2), pool=pool)
    t = pq.read_table(f"{out2}/scores")
    kept = t.filter(t["kept"])["clip_score"].to_numpy()
    assert (kept >= thr).all() and len(kept) == int((s >= thr).sum())


def test_unavailable_weights_fail_fast_and_keep_earlier_outputs(tmp_path, tiny_ckpt,
                                                                ray_session):
    from curate.cli import app

    pool = _pool(tmp_path, corrupt=())
    out = tmp_path / "run"
    run_pipeline(base_config(stages=["download"], pool={"shard_size": 11}), str(out), pool=pool)
    before = {p.name: p.read_bytes() for p in (out / "images").glob("*.parquet")}
    yaml = tmp_path / "p.yaml"
    yaml.write_text("stages: [download, score]\npool: {shard_size: 11}\n"
                    "download: {threads: 8, timeout: 2, allow_private_addresses: true}\n"
                    "score: {model: ViT-B-32, pretrained: laion2b_s34b_b79k}\n")
    r = CliRunner().invoke(app, ["run", "--pool", pool, "--pipeline", str(yaml), "--out",
                                 str(out)])
    assert r.exit_code == 2, r.output
    assert not list((out / "scores").glob("part-*"))  # failed on the driver, before any shard
    line = r.output.strip().splitlines()[-1]
    assert "laion2b_s34b_b79k" in line and "ViT-B-32" in line, line
    after = {p.name: p.read_bytes() for p in (out / "images").glob("*.parquet")}
    assert after == before


def test_decode_fast_scores_the_same_pairs_closely(tmp_path, tiny_ckpt, exact):
    """score.decode: fast keeps the per-image error contract and moves embeddings little."""
    pool, out = exact
    run_pipeline(_cfg(tiny_ckpt, decode="fast"), str(tmp_path / "fast"), pool=pool)
    a, b = _scores(out).sort_by("uid"), _scores(tmp_path / "fast").sort_by("uid")
    assert a["reason"].to_pylist() == b["reason"].to_pylist()
    ok = pc.is_valid(a["clip_score"])
    ea = np.array(a.filter(ok)["image_emb"].to_pylist(), np.float32)
    eb = np.array(b.filter(ok)["image_emb"].to_pylist(), np.float32)
    cos = (ea * eb).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eb, axis=1)
    assert cos.min() > 0.98, cos.min()


def test_decode_gpu_on_cpu_keeps_the_same_pairs_as_exact(tmp_path, tiny_ckpt, exact, caplog):
    """score.decode: gpu without CUDA runs the same code on the CPU (one warning line on the
    driver): same reasons, same kept set under a min_score cut, embeddings within fp16
    rounding; batch_size: auto is 256 on the CPU."""
    import logging

    pool, out = exact
    a = _scores(out).sort_by("uid")
    s = np.sort(a["clip_score"].drop_null().to_numpy())
    thr = float((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)  # between two scores: no tie
    with caplog.at_level(logging.WARNING, logger="curate.stages.score"):
        run_pipeline(_cfg(tiny_ckpt, decode="gpu", batch_size="auto",
                          filter={"min_score": thr}), str(tmp_path / "gpu"), pool=pool)
    warned = [r for r in caplog.records if "score.decode: gpu" in r.getMessage()]
    assert len(warned) == 1 or torch_cuda_available()
    b = _scores(tmp_path / "gpu").sort_by("uid")
    kept_exact = {u for u, sc, r in zip(a["uid"].to_pylist(), a["clip_score"].to_pylist(),
                                        a["reason"].to_pylist(), strict=True)
                  if r is None and sc >= thr}
    assert set(b.filter(b["kept"])["uid"].to_pylist()) == kept_exact
    ra, rb = a["reason"].to_pylist(), b["reason"].to_pylist()
    assert [x if x != "below_min_score" else None for x in rb] == ra
    ok = pc.is_valid(a["clip_score"])
    ea = np.array(a.filter(ok)["image_emb"].to_pylist(), np.float32)
    eb = np.array(b.filter(ok)["image_emb"].to_pylist(), np.float32)
    np.testing.assert_allclose(ea, eb, atol=2e-3)


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
