"""toxicity: alt-profanity-check's shipped model per caption, as a tag or a filter.

The reference is written here: the package's two joblib files loaded with joblib and
``model.predict_proba(vectorizer.transform(texts))[:, 1]`` (what its ``predict_prob``
computes), never curate's own functions. The held-out figures recorded in
``curate.models.toxicity.QUALITY`` are recomputed from ``tests/data/toxicity_heldout*.tsv``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import read_parts
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

from curate.core.rundir import step_info
from curate.driver import run_pipeline
from curate.errors import CurateError
from curate.models import toxicity

DATA = Path(__file__).parent / "data"
CAPTIONS = [
    "a red ceramic coffee mug on a wooden table",
    "golden retriever puppy playing in the grass",
    "photo of a stupid ugly idiot",
    "shut up, you worthless moron",
    "killer whale jumping out of the water",
    "bloody mary cocktail with celery",
    "sunset over the mountains\nwith pink clouds",
    "you are a pathetic loser and everyone hates you",
    "DSC_0412.JPG",
    "Ein Hund läuft am Strand entlang",
    "pussy willow branch in a glass vase",
    "go to hell, you filthy scumbag",
]


def package_files() -> Path:
    spec = importlib.util.find_spec("profanity_check")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def reference(texts: list[str]) -> np.ndarray:
    """The package's predict_prob, from its files: P(offensive), float64."""
    vectorizer = joblib.load(package_files() / "vectorizer.joblib")
    model = joblib.load(package_files() / "model.joblib")
    return model.predict_proba(vectorizer.transform(texts))[:, 1]


def heldout(name: str) -> tuple[np.ndarray, list[str]]:
    rows = [line.rstrip("\n").split("\t", 1)
            for line in (DATA / name).read_text("utf-8").splitlines() if line.strip()]
    return np.array([int(r[0]) for r in rows]), [r[1] for r in rows]


def _pool(tmp_path: Path) -> str:
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": CAPTIONS}), path)
    return str(path)


def test_ptoxic_is_the_packages_predict_prob():
    import profanity_check

    got = toxicity.ptoxic(CAPTIONS)
    assert got.dtype == np.float32 and got.shape == (len(CAPTIONS),)
    ref = reference(CAPTIONS)
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    np.testing.assert_array_equal(got, profanity_check.predict_prob(CAPTIONS).astype(np.float32))
    assert ref[2] > 0.5 and ref[0] < 0.5  # the set spans both sides
    # Arrow input (chunked, as a table column) gives the same scores
    col = pa.chunked_array([CAPTIONS[:5], CAPTIONS[5:]])
    np.testing.assert_array_equal(toxicity.ptoxic(col), got)


def test_null_and_empty_captions_score_zero():
    texts = [None, "", "   ", "photo of a stupid ugly idiot", None]
    got = toxicity.ptoxic(texts)
    assert got[[0, 1, 2, 4]].tolist() == [0.0] * 4
    assert got[3] == np.float32(reference([texts[3]])[0])
    assert toxicity.ptoxic(pa.array([None, None], pa.string())).tolist() == [0.0, 0.0]
    assert toxicity.ptoxic([]).shape == (0,)


def test_description_records_package_files_and_licence():
    info = toxicity.describe()
    assert info["package"] == "alt-profanity-check" and info["version"] == "1.9.1"
    for name in ("vectorizer.joblib", "model.joblib"):
        want = hashlib.sha256((package_files() / name).read_bytes()).hexdigest()
        assert info["sha256"][name] == want
    assert info["licence"].startswith("MIT")
    assert info["quality"] == toxicity.QUALITY


@pytest.mark.parametrize(("name", "key"), [("toxicity_heldout.tsv", "heldout_en"),
                                           ("toxicity_heldout_non_english.tsv",
                                            "heldout_non_en")])
def test_heldout_figures_match_the_record(name, key):
    labels, texts = heldout(name)
    scores = toxicity.ptoxic(texts)
    pred = scores > 0.5
    got = {"n": len(labels), "toxic": int(labels.sum()),
           "accuracy": round(accuracy_score(labels, pred), 4),
           "precision": round(precision_score(labels, pred), 4),
           "recall": round(recall_score(labels, pred), 4),
           "roc_auc": round(roc_auc_score(labels, scores), 4)}
    assert got == toxicity.QUALITY[key]
    if key == "heldout_en":  # floors: a model this weak would not be worth shipping
        assert got["n"] >= 120 and got["toxic"] >= 60 and got["n"] - got["toxic"] >= 60
        assert got["roc_auc"] > 0.9 and got["accuracy"] > 0.85


FLICKR = (Path(__file__).resolve().parents[2] / "shared" / "data" / "captions"
          / "flickr8k_captions.parquet")


@pytest.mark.skipif(not FLICKR.is_file(), reason="shared/data's Flickr8k is not here")
def test_flickr8k_false_positive_shares_match_the_record():
    caps = pq.read_table(FLICKR, columns=["caption"])["caption"].to_pylist()
    scores = toxicity.ptoxic(caps)
    got = {"n": len(caps), **{f"above_{t}": round(float(np.mean(scores > t)), 4)
                              for t in (0.5, 0.8, 0.9)}}
    assert got == toxicity.QUALITY["flickr8k"]


def test_tag_only_keeps_every_pair(tmp_path, ray_session):
    cfg = base_config(stages=["toxicity", "emit"], pool={"shard_size": 5})
    out = tmp_path / "run"
    manifest = run_pipeline(cfg, str(out), pool=_pool(tmp_path))
    got = read_parts(out / "toxicity")
    assert got.schema.names == ["uid", "ptoxic", "kept", "reason", "detail"]
    assert got.schema.field("ptoxic").type == pa.float32()
    pool = read_parts(out / "pool")
    by_uid = dict(zip(got["uid"].to_pylist(), got["ptoxic"].to_numpy()))
    ref = reference(pool["caption"].to_pylist()).astype(np.float32)
    assert [by_uid[u] for u in pool["uid"].to_pylist()] == ref.tolist()
    assert got["kept"].to_pylist() == [True] * len(CAPTIONS)
    assert got["reason"].null_count == len(CAPTIONS)
    curated = read_parts(out / "curated")
    assert curated.num_rows == len(CAPTIONS) and "ptoxic" in curated.column_names
    info = step_info(manifest["stages"]["toxicity"], "model")
    assert info["version"] == "1.9.1" and info["licence"].startswith("MIT")
    assert set(info["sha256"]) == {"vectorizer.joblib", "model.joblib"}
    assert info["quality"] == toxicity.QUALITY
    assert ("toxicity", "toxic") in cfg.sensitive()


def test_max_ptoxic_drops_exactly_the_pairs_above(tmp_path, ray_session):
    from curate.app.query import connect

    t = 0.5
    cfg = base_config(stages=["toxicity", "emit"], pool={"shard_size": 5},
                      toxicity={"max_ptoxic": t})
    out = tmp_path / "run"
    manifest = run_pipeline(cfg, str(out), pool=_pool(tmp_path))
    pool = read_parts(out / "pool")
    ref = reference(pool["caption"].to_pylist()).astype(np.float32)
    above = {u for u, s in zip(pool["uid"].to_pylist(), ref) if float(s) > t}
    assert 0 < len(above) < len(CAPTIONS)
    got = read_parts(out / "toxicity")
    assert {u for u, k in zip(got["uid"].to_pylist(), got["kept"].to_pylist()) if not k} \
        == above
    for score, kept, reason, detail in zip(*(got[c].to_pylist() for c in
                                             ("ptoxic", "kept", "reason", "detail"))):
        assert reason == (None if kept else "toxic")
        if kept:
            assert detail is None
        else:  # "0.9731 > 0.5" (Arrow writes 1.0 as "1")
            value, rest = detail.split(" ", 1)
            assert rest == "> 0.5" and float(value) == round(score, 4)
    curated = read_parts(out / "curated")
    assert set(curated["uid"].to_pylist()) == set(pool["uid"].to_pylist()) - above
    assert manifest["stages"]["toxicity"]["dropped"] == {"toxic": len(above)}
    rows = connect(str(out)).execute(
        "SELECT uid, dropped_by, reason FROM decisions WHERE NOT kept").fetchall()
    assert {r[0] for r in rows} == above
    assert {(r[1], r[2]) for r in rows} == {("toxicity", "toxic")}


def test_process_gives_null_captions_zero(tmp_path):
    from curate.stages.base import StageSpec
    from curate.stages.registry import parse_pipeline
    from curate.stages.runtime import build
    from curate.stages.toxicity import ToxicityStage

    cfg = parse_pipeline({"stages": ["toxicity"], "toxicity": {"max_ptoxic": 0.5}})
    spec = StageSpec("toxicity", str(tmp_path / "run"), cfg.dump(),
                     cfg.fingerprints()["toxicity"])
    stage = build(spec, ToxicityStage)
    caps = [None, "", "you are a pathetic loser and everyone hates you"]
    out = stage.process("part-00000.parquet",
                        pa.table({"uid": ["a", "b", "c"], "caption": pa.array(caps, pa.string())}))
    assert out["ptoxic"].to_pylist()[:2] == [0.0, 0.0]
    assert out["kept"].to_pylist() == [True, True, False]


@pytest.mark.parametrize("section", [{"model": "detoxify"}, {"max_ptoxic": 1.5},
                                     {"max_ptoxic": 0.5, "threshold": 0.5}])
def test_bad_settings_are_config_errors(section):
    with pytest.raises(CurateError):
        base_config(stages=["toxicity"], toxicity=section)
