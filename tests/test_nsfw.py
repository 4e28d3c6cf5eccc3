"""The nsfw stage and LAION's NSFW heads: against LAION's published modules, re-written here.

The references are independent of curate's code: ``NSFWModel_B32``/``NSFWModel_L14`` as in
LAION-AI/CLIP-based-NSFW-Detector@21072a2 src/models.py (torch, loaded with
``load_state_dict(strict=True)``), fed as clip-retrieval's ``clip_back.py`` feeds them
(``normalized``: L2, a zero norm divides by 1), and clip-retrieval's violence formula.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from conftest import base_config
from helpers import read_parts
from torch import nn

from curate.core.rundir import step_info
from curate.driver import run_pipeline
from curate.errors import CurateError, InputError

DATA = Path(__file__).parent / "data" / "laion_aesthetic"
HEADS = Path(__file__).parents[1] / "curate" / "models" / "heads"
FILES = {"vit_b_32": "clip_ViT-B-32_openai_binary_nsfw_head.pth",
         "vit_l_14": "clip_ViT-L-14_openai_binary_nsfw_head.pth"}
SHA = {"vit_b_32": "615f35e1364b40b14c30e770544345b82d8e558240692ad72eb8eafa466ef25c",
       "vit_l_14": "fc4d70d2eea4e948d13bc27bf7114f5e8d3bd317eb01a4b49b35dcf1a3d672c6"}


# ----------------------------------------------------------------------- LAION's modules
class Normalization(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("variance", torch.ones(shape))

    def forward(self, x):
        return (x - self.mean) / (self.variance.sqrt() + 1e-10)


class NSFWModel_B32(nn.Module):  # noqa: N801 - LAION's name
    def __init__(self):
        super().__init__()
        self.norm = Normalization([512])
        self.linear_1 = nn.Linear(512, 32)
        self.linear_2 = nn.Linear(32, 32)
        self.linear_3 = nn.Linear(32, 1)
        self.dropout = nn.Dropout(0.5)
        self.act = nn.ReLU()
        self.act_out = nn.Sigmoid()

    def forward(self, x):
        x = self.norm(x)
        x = self.act(self.linear_1(x))
        x = self.dropout(self.act(self.linear_2(x)))
        return self.act_out(self.linear_3(x))


class NSFWModel_L14(nn.Module):  # noqa: N801 - LAION's name
    def __init__(self):
        super().__init__()
        self.norm = Normalization([768])
        self.linear_1 = nn.Linear(768, 64)
        self.linear_2 = nn.Linear(64, 512)
        self.linear_3 = nn.Linear(512, 256)
        self.linear_4 = nn.Linear(256, 1)
        self.act = nn.ReLU()
        self.act_out = nn.Sigmoid()

    def forward(self, x):
        x = self.norm(x)
        x = self.act(self.linear_1(x))
        x = self.act(self.linear_2(x))
        x = self.act(self.linear_3(x))
        return self.act_out(self.linear_4(x))


def _laion(model: str) -> nn.Module:
    net = {"vit_b_32": NSFWModel_B32, "vit_l_14": NSFWModel_L14}[model]()
    net.load_state_dict(torch.load(HEADS / FILES[model], map_location="cpu", weights_only=True),
                        strict=True)
    return net.eval()


def normalized(a, axis=-1, order=2):  # clip-retrieval clip_back.py, verbatim
    l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, axis)


def _punsafe(x: np.ndarray, model: str) -> np.ndarray:
    with torch.no_grad():
        return _laion(model)(torch.from_numpy(normalized(x).astype(np.float32)))[:, 0].numpy()


def _violent(x: np.ndarray, model: str) -> np.ndarray:
    prompts = np.load(HEADS / f"violence_detection_{model}.npy")
    return np.argmax(np.einsum("ij,kj->ik", normalized(x), prompts), axis=1) == 1


def _span(model: str) -> np.ndarray:
    """Real CLIP embeddings (LAION's rating examples, punsafe ~0), each moved up the LAION
    module's logit gradient to punsafe ~1, the mixtures in between, some rows pulled towards
    the violence prompt, and one zero row: punsafe spans 0..1 and the flag takes both values."""
    logits = _laion(model)
    logits.act_out = nn.Identity()
    x0 = torch.from_numpy(normalized(np.concatenate(
        [np.load(DATA / model / f"rating{i}.npy") for i in range(10)]).astype(np.float32)))
    x = x0.clone()
    for _ in range(4):
        x.requires_grad_(True)
        logit = logits(x)[:, 0].sum()
        (g,) = torch.autograd.grad(logit, x)
        x = (x + 0.05 * g / g.norm(dim=1, keepdim=True)).detach()
        x = x / x.norm(dim=1, keepdim=True)
    mixes = [(1 - a) * x0 + a * x for a in np.linspace(0, 1, 21)]
    prompt = torch.from_numpy(np.load(HEADS / f"violence_detection_{model}.npy")[1])
    mixes += [(1 - a) * x0 + a * prompt for a in (0.3, 0.5, 0.7)]
    out = torch.cat(mixes).numpy().astype(np.float32)
    return np.concatenate([out * 3.0, np.zeros((1, out.shape[1]), np.float32)])


def _pool(tmp_path, x: np.ndarray, text: bool = False) -> str:
    p = tmp_path / "pool.parquet"
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    cols = {"caption": [f"pair {i}" for i in range(len(x))], "image_emb": emb}
    if text:
        cols["text_emb"] = emb
    pq.write_table(pa.table(cols), p)
    return str(p)


# ----------------------------------------------------------------------- the heads and math
@pytest.mark.parametrize("model", ["vit_b_32", "vit_l_14"])
def test_bundled_files_are_laions(model):
    assert hashlib.sha256((HEADS / FILES[model]).read_bytes()).hexdigest() == SHA[model]
    assert np.load(HEADS / f"violence_detection_{model}.npy").shape == (
        2, {"vit_b_32": 512, "vit_l_14": 768}[model])
    assert "Christoph Schuhmann" in (HEADS / "LICENSE-nsfw-detector").read_text()


@pytest.mark.parametrize("model", ["vit_b_32", "vit_l_14"])
def test_punsafe_and_violence_equal_laion_and_clip_retrieval(model):
    from curate.algorithms.heads import head_scores, violent
    from curate.models.head import load_head, load_prompts

    x = _span(model)
    want = _punsafe(x, model)
    assert want.min() < 0.05 and want.max() > 0.95  # the inputs span punsafe 0..1
    assert ((want > 0.2) & (want < 0.8)).sum() >= 5  # and the middle
    head = load_head(str(HEADS / FILES[model]))
    assert head.norm is not None and [w.shape[0] for w, _ in head][-1] == 1
    got = head_scores(x, head, "relu", sigmoid=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    flag = violent(x, load_prompts(model))
    assert flag.tolist() == _violent(x, model).tolist()
    assert 0 < flag.sum() < len(flag) and not flag[-1]  # both values; the zero row: prompt 0


def test_classifier_applies_the_normalisation(tmp_path, ray_session):
    """LAION's NSFW head brought to ``classifier`` (relu, sigmoid): equal to LAION's module
    (before, the norm entries were skipped and the scores were up to 0.51 off)."""
    from curate.algorithms.heads import head_scores
    from curate.models.head import load_head

    x = _span("vit_b_32")
    want = _punsafe(x, "vit_b_32")
    head = load_head(str(HEADS / FILES["vit_b_32"]))
    skipped = head_scores(x, list(head), "relu", sigmoid=True)  # the old behaviour
    assert np.abs(skipped - want).max() > 0.3
    cfg = base_config(stages=["unsafe"], pool={"shard_size": 64},
                      unsafe={"kind": "classifier", "head": str(HEADS / FILES["vit_b_32"]),
                              "threshold": 0.5, "keep": "below", "sigmoid": True,
                              "activation": "relu"})
    run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x))
    out = read_parts(tmp_path / "run" / "unsafe")
    np.testing.assert_allclose(out["score"].to_numpy(), want, atol=1e-5, rtol=0)
    assert out["kept"].to_pylist() == (out["score"].to_numpy() < 0.5).tolist()


def test_a_state_dict_with_an_unknown_entry_is_refused(tmp_path):
    from curate.models.head import load_head

    state = torch.load(HEADS / FILES["vit_b_32"], map_location="cpu", weights_only=True)
    torch.save({**state, "temperature": torch.ones(1)}, tmp_path / "extra.pth")
    with pytest.raises(InputError, match=r"extra\.pth: entry 'temperature'"):
        load_head(str(tmp_path / "extra.pth"))
    bn = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    torch.save(bn.state_dict(), tmp_path / "bn.pth")
    with pytest.raises(InputError, match=r"bn\.pth: 1\.weight is not a linear layer"):
        load_head(str(tmp_path / "bn.pth"))
    conv = {"0.weight": torch.zeros(4, 3, 1, 1), "0.bias": torch.zeros(4)}
    torch.save(conv, tmp_path / "conv.pth")
    with pytest.raises(InputError, match=r"conv\.pth: 0\.weight is not a linear layer"):
        load_head(str(tmp_path / "conv.pth"))
    torch.save({"norm.mean": torch.zeros(8), **nn.Linear(8, 1).state_dict()},
               tmp_path / "half.pth")
    with pytest.raises(InputError, match=r"'norm\.mean' has no variance"):
        load_head(str(tmp_path / "half.pth"))
    torch.save({"norm.mean": torch.zeros(7), "norm.variance": torch.ones(7),
                **nn.Linear(8, 1).state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(InputError, match=r"'norm\.mean' has shape \(7,\) but the first layer "
                                         r"takes 8"):
        load_head(str(tmp_path / "wide.pth"))


# ----------------------------------------------------------------------- the stage
def test_stage_tags_only_by_default(tmp_path, ray_session):
    x = _span("vit_l_14")
    cfg = base_config(stages=["nsfw"], pool={"shard_size": 64})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x))
    out = read_parts(tmp_path / "run" / "nsfw")
    pool = read_parts(tmp_path / "run" / "pool")
    assert out.schema.names == ["uid", "punsafe", "violent", "kept", "reason", "detail"]
    assert out["uid"].to_pylist() == pool["uid"].to_pylist()
    np.testing.assert_allclose(out["punsafe"].to_numpy(), _punsafe(x, "vit_l_14"), atol=1e-5,
                               rtol=0)
    assert out["violent"].to_pylist() == _violent(x, "vit_l_14").tolist()
    assert all(out["kept"].to_pylist()) and out["reason"].null_count == len(x)
    g = step_info(m["stages"]["nsfw"], "head")
    assert g["sha256"] == SHA["vit_l_14"] and g["model"] == "vit_l_14"
    assert g["source_commit"] == "21072a2a38e6d2bb294be03c005aaa9a65778e47"
    assert g["file"].endswith(FILES["vit_l_14"]) and "MIT" in g["licence"]
    assert "OpenAI ViT-L-14" in g["warning"]  # pool embeddings: say what they must be


def test_stage_drops_above_max_punsafe_and_violent(tmp_path, ray_session):
    x = _span("vit_b_32")
    cfg = base_config(stages=["nsfw"], pool={"shard_size": 64},
                      nsfw={"model": "vit_b_32", "max_punsafe": 0.5, "drop_violent": True})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x))
    out = read_parts(tmp_path / "run" / "nsfw")
    p, v = _punsafe(x, "vit_b_32"), _violent(x, "vit_b_32")
    assert out["kept"].to_pylist() == (~((p > 0.5) | v)).tolist()
    reasons = out["reason"].to_pylist()
    assert [r == "nsfw" for r in reasons] == (p > 0.5).tolist()
    assert [r == "violent" for r in reasons] == (v & ~(p > 0.5)).tolist()
    nsfw = out.filter(pc.equal(out["reason"], "nsfw"))
    assert nsfw.num_rows and all(d.endswith(" > 0.5") for d in nsfw["detail"].to_pylist())
    assert m["stages"]["nsfw"]["dropped"] == {
        "nsfw": int((p > 0.5).sum()), "violent": int((v & ~(p > 0.5)).sum())}
    assert step_info(m["stages"]["nsfw"], "head")["sha256"] == SHA["vit_b_32"]


def test_max_punsafe_alone_drops_exactly_the_pairs_above_it(tmp_path, ray_session):
    x = _span("vit_l_14")
    cfg = base_config(stages=["nsfw"], pool={"shard_size": 40},
                      nsfw={"max_punsafe": 0.9, "violence": False})
    run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x))
    out = read_parts(tmp_path / "run" / "nsfw")
    p = _punsafe(x, "vit_l_14")
    assert out["kept"].to_pylist() == (p <= 0.9).tolist()
    assert set(out.filter(pc.invert(out["kept"]))["reason"].to_pylist()) == {"nsfw"}
    assert out["violent"].null_count == len(x)  # violence: false


def test_sensitive_codes():
    from curate.stages.nsfw import NsfwStage

    assert NsfwStage.sensitive == ("nsfw", "violent")
    assert base_config(stages=["nsfw"]).sensitive() >= {("nsfw", "nsfw"), ("nsfw", "violent")}


def test_score_stage_of_another_model_is_one_line(tmp_path, ray_session):
    x = _span("vit_b_32")[:20]
    cfg = base_config(stages=["score", "nsfw"], pool={"shard_size": 64},
                      score={"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
                      nsfw={"model": "vit_b_32"})
    with pytest.raises(CurateError) as err:
        run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x, text=True))
    msg = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in msg
    assert "nsfw" in msg and "vit_b_32" in msg and "ViT-B-32 (laion2b_s34b_b79k)" in msg
    assert not (tmp_path / "run" / "nsfw").exists() or not list(
        (tmp_path / "run" / "nsfw").glob("part-*.parquet"))  # failed before any worker


def test_allow_other_model_runs_with_a_warning(tmp_path, ray_session):
    x = _span("vit_b_32")[:20]
    cfg = base_config(stages=["score", "nsfw"], pool={"shard_size": 64},
                      score={"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
                      nsfw={"model": "vit_b_32", "allow_other_model": True})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x, text=True))
    assert "not LAION's" in step_info(m["stages"]["nsfw"], "head")["warning"]
    assert read_parts(tmp_path / "run" / "nsfw").num_rows > 0


def test_openai_score_stage_has_no_warning(tmp_path, ray_session):
    x = _span("vit_b_32")[:20]
    cfg = base_config(stages=["score", "nsfw"], pool={"shard_size": 64},
                      score={"model": "ViT-B-32", "pretrained": "openai"},
                      nsfw={"model": "vit_b_32"})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x, text=True))
    assert step_info(m["stages"]["nsfw"], "head").get("warning") is None


def test_pool_embeddings_of_the_wrong_width_are_one_line(tmp_path, ray_session):
    x = _span("vit_b_32")[:10]
    cfg = base_config(stages=["nsfw"], pool={"shard_size": 64})  # vit_l_14: 768-d
    with pytest.raises(CurateError, match=r"takes 768-d OpenAI ViT-L-14 embeddings but the "
                                          r"pool's image_emb is 512-d"):
        run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x))


def test_drop_violent_needs_violence():
    with pytest.raises(Exception, match="drop_violent needs violence"):
        base_config(stages=["nsfw"], nsfw={"violence": False, "drop_violent": True})
