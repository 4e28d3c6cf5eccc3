"""The aesthetic and classifier stages: LAION's bundled heads on real embeddings, heads a user
brings, embeddings the pool brings (no images, no model), and clear errors.

The references are written here: the head is read with torch and applied as ``x̂ · w + b``
(LAION-AI/aesthetic-predictor normalises the embedding, then one nn.Linear).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import base_config
from helpers import read_parts

from curate.core.rundir import step_info
from curate.driver import run_pipeline
from curate.errors import CurateError

DATA = Path(__file__).parent / "data" / "laion_aesthetic"
HEADS = Path(__file__).parents[1] / "curate" / "models" / "heads"


def _direct(x: np.ndarray, pth: Path) -> np.ndarray:
    s = torch.load(pth, map_location="cpu", weights_only=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ s["weight"].numpy()[0] + s["bias"].numpy()[0]


def _ratings(model: str) -> np.ndarray:
    return np.concatenate([np.load(DATA / model / f"rating{i}.npy") for i in range(10)])


@pytest.mark.parametrize("model", ["vit_b_32", "vit_l_14"])
def test_bundled_heads_on_real_embeddings_rise_with_the_rating(model):
    from curate.algorithms.heads import head_scores
    from curate.models.head import load_head

    x = _ratings(model)
    got = head_scores(x, load_head(model))
    want = _direct(x, HEADS / f"sa_0_4_{model}_linear.pth")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(got) > 0), got  # rating 0 -> 9: scores rise
    assert got[0] < 0 < got[4] and got[9] > 10  # and span LAION's scale (~0-10)
    # scaling an embedding changes nothing: the head normalises first
    np.testing.assert_allclose(head_scores(3 * x, load_head(model)), got, rtol=1e-5)


def _pool(tmp_path, x: np.ndarray) -> str:
    p = tmp_path / "pool.parquet"
    pq.write_table(pa.table({
        "caption": [f"pair {i}" for i in range(len(x))],
        "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])}), p)
    return str(p)


def _real_like(n: int, model: str, seed: int = 0) -> np.ndarray:
    """Mixtures of the real rating embeddings, so scores spread over LAION's range."""
    r = _ratings(model)
    w = np.random.default_rng(seed).dirichlet(np.ones(10) * 0.3, size=n).astype(np.float32)
    return w @ r


def test_stage_on_pool_embeddings_filters_by_min_score(tmp_path, ray_session):
    x = _real_like(60, "vit_l_14")
    cfg = base_config(stages=["aesthetic"], pool={"shard_size": 16},
                      aesthetic={"model": "vit_l_14", "min_score": 5.0})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x))
    out = read_parts(tmp_path / "run" / "aesthetic")
    pool = read_parts(tmp_path / "run" / "pool")
    assert out["uid"].to_pylist() == pool["uid"].to_pylist()
    want = _direct(x, HEADS / "sa_0_4_vit_l_14_linear.pth")
    np.testing.assert_allclose(out["aesthetic_score"].to_numpy(), want, rtol=1e-5, atol=1e-5)
    assert out["kept"].to_pylist() == (want > 5.0).tolist()  # LAION's cut: score > t
    dropped = out.filter(pa.compute.invert(out["kept"]))
    assert 0 < dropped.num_rows < len(x)
    assert set(dropped["reason"].to_pylist()) == {"below_aesthetic_score"}
    assert all(d.endswith(" <= 5") for d in dropped["detail"].to_pylist())
    st = m["stages"]["aesthetic"]
    assert st["dropped"] == {"below_aesthetic_score": dropped.num_rows}
    # pool embeddings: say what they must be
    assert "OpenAI ViT-L-14" in step_info(st, "head")["warning"]


def test_head_of_the_wrong_width_is_one_line(tmp_path, ray_session):
    x = _real_like(10, "vit_b_32")  # 512-d
    cfg = base_config(stages=["aesthetic"], pool={"shard_size": 16},
                      aesthetic={"model": "vit_l_14"})
    with pytest.raises(CurateError, match=r"takes 768-d embeddings but the image embeddings "
                                          r"are 512-d"):
        run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x))


def test_user_mlp_head_as_a_classifier(tmp_path, ray_session):
    """An NSFW-style head: two linear layers with a ReLU, logits through a sigmoid, pairs
    above the threshold dropped; equals the torch module it came from."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    head = tmp_path / "nsfw.pth"
    torch.save(net.state_dict(), head)
    x = np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32)
    with torch.no_grad():
        xn = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
        want = torch.sigmoid(net(xn))[:, 0].numpy()
    t = float(np.median(want))
    cfg = base_config(stages=["nsfw"], pool={"shard_size": 16},
                      nsfw={"kind": "classifier", "head": str(head), "threshold": t,
                            "keep": "below", "sigmoid": True, "activation": "relu"})
    run_pipeline(cfg, str(tmp_path / "run"), pool=_pool(tmp_path, x))
    out = read_parts(tmp_path / "run" / "nsfw")
    np.testing.assert_allclose(out["score"].to_numpy(), want, rtol=1e-5, atol=1e-6)
    assert out["kept"].to_pylist() == (want < t).tolist()
    assert set(out.filter(pa.compute.invert(out["kept"]))["reason"].to_pylist()) == {
        "classifier_above_threshold"}


def test_bad_head_files_are_one_line(tmp_path):
    from curate.errors import InputError
    from curate.models.head import load_head

    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="not a PyTorch state dict"):
        load_head(str(tmp_path / "junk.pth"))
    torch.save({"w": torch.zeros(3)}, tmp_path / "nolinear.pth")
    with pytest.raises(InputError, match="no linear layer"):
        load_head(str(tmp_path / "nolinear.pth"))
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "two.pth")
    with pytest.raises(InputError, match="gives 2 outputs"):
        load_head(str(tmp_path / "two.pth"))
    with pytest.raises(InputError, match="no such file"):
        load_head(str(tmp_path / "missing.pth"))
