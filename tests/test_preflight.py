"""Preflight: a run that cannot finish stops before ingest, Ray and the first stage (exit 2),
one line per problem naming the instance and the key, nothing fetched.

The expected lines are written here from the contract (``<instance>.<key>: ...`` or
``<instance>: ...`` with the column), not computed by the module under test.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import TINY, write_tiny_config, write_vocab

from curate.errors import ConfigError, CurateError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Offline, with an empty Hugging Face cache: no CLIP weights on this machine."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "hf-cache"
    empty.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty))


@pytest.fixture
def no_ray(monkeypatch):
    """The test fails if anything starts the engine (Ray)."""
    from curate.core import engine

    def init(*_a, **_k):
        raise AssertionError("engine.init was called: Ray started before preflight stopped")

    monkeypatch.setattr(engine, "init", init)


def caption_pool(path: Path, **extra) -> str:
    """Two pairs whose URLs point at a closed loopback port (never fetched here)."""
    cols = {"url": ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b.jpg"],
            "caption": ["a dog on the beach", "a red car"], **extra}
    pq.write_table(pa.table(cols), str(path))
    return str(path)


def emb_pool(path: Path, d: int = 16, text: bool = True) -> str:
    fsl = pa.FixedSizeListArray.from_arrays(pa.array([0.1] * (2 * d), pa.float32()), d)
    extra = {"image_emb": fsl, **({"text_emb": fsl} if text else {})}
    return caption_pool(path, **extra)


def config(**sections):
    from curate.stages.registry import parse_pipeline

    return parse_pipeline({"pool": {"shard_size": 8}, "run": {"num_cpus": 2}, **sections})


def check(cfg, tmp_path, pool) -> list[str]:
    from curate.stages.preflight import preflight

    return preflight(cfg, str(tmp_path / "run"), pool)


def test_default_pipeline_without_weights_stops_before_anything_runs(tmp_path, no_weights,
                                                                     no_ray):
    from typer.testing import CliRunner

    from curate.cli import app

    pool = caption_pool(tmp_path / "pool.parquet")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "--pool", pool, "--pipeline",
                                 str(ROOT / "pipelines" / "default.yaml"), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "Ray started" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("curate: error: ")]
    assert len(errors) == 1, r.output  # the weights are the only thing missing
    line = errors[0].removeprefix("curate: error: ")
    assert line.startswith("score.pretrained: ")
    assert "ViT-B-32/datacomp_xl_s13b_b90k" in line and "offline" in line
    assert "hf download laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K" in line  # how to get them
    assert not (out / "images").exists() and not (out / "pool").exists()  # nothing fetched
    assert not (out / "run.json").exists()


@pytest.mark.parametrize("case", ["metadata", "denylist", "head", "classifier_head",
                                  "lang_column", "embeddings", "eval_set", "wordnet"])
def test_each_missing_need_is_one_line_naming_instance_and_key(tmp_path, case):
    missing = str(tmp_path / "missing.file")
    pool = caption_pool(tmp_path / "pool.parquet")
    vocab = write_vocab(tmp_path)
    cases = {
        "metadata": ({"stages": ["match"], "match": {"metadata": missing}},
                     "match.metadata: ", missing),
        "denylist": ({"stages": ["download"], "download": {"denylist": {"md5": missing}}},
                     "download.denylist.md5: ", missing),
        "head": ({"stages": ["aesthetic"], "aesthetic": {"model": missing + ".pth"}},
                 "aesthetic.model: ", missing),
        "classifier_head": ({"stages": ["nsfw_b"], "nsfw_b": {
            "kind": "classifier", "head": missing, "threshold": 0.5}}, "nsfw_b.head: ", missing),
        "lang_column": ({"stages": ["match"], "match": {"metadata": {"en": vocab,
                                                                     "de": vocab}}},
                        "match: the pool has no `lang` column", "language"),
        "embeddings": ({"stages": ["aesthetic"], "aesthetic": {"model": "vit_b_32"}},
                       "aesthetic: needs image embeddings", "image_emb"),
        "eval_set": ({"stages": ["decontaminate"], "decontaminate": {
            "eval_sets": {"coco": missing}}}, "decontaminate.eval_sets.coco: ", missing),
        "wordnet": ({"stages": ["datacomp_text"], "datacomp_text": {"wordnet": missing}},
                    "datacomp_text.wordnet: ", "WordNet"),
    }
    sections, prefix, fragment = cases[case]
    if case in ("head", "classifier_head", "eval_set"):  # the pool brings embeddings: the
        pool = emb_pool(tmp_path / "emb.parquet")  # file is the only problem
    problems = check(config(**sections), tmp_path, pool)
    assert len(problems) == 1, problems
    assert problems[0].startswith(prefix) and fragment in problems[0], problems[0]
    assert "\n" not in problems[0]


def test_a_pipeline_with_everything_present_passes(tmp_path):
    tiny = write_tiny_config(tmp_path)
    ckpt = tmp_path / "tiny.pt"
    ckpt.write_bytes(b"weights")  # preflight looks, it does not load
    head = tmp_path / "head.pth"
    head.write_bytes(b"head")
    md5 = tmp_path / "md5.txt"
    md5.write_text("d41d8cd98f00b204e9800998ecf8427e\n")
    evalset = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"image": [b"x"]}), str(evalset))
    cfg = config(stages=["download", "language", "score", "decontaminate", "aesthetic",
                         "watermark", "toxicity", "datacomp_text", "match", "balance",
                         "image_dedup", "faces", "emit", "report"],
                 download={"denylist": {"md5": str(md5)}},
                 language={"languages": ["en"]},
                 score={"model_config": tiny, "pretrained": str(ckpt)},
                 decontaminate={"eval_sets": {"mine": str(evalset)}},
                 aesthetic={"model": "vit_b_32"},
                 watermark={"kind": "classifier", "head": str(head), "threshold": 0.5},
                 match={"metadata": write_vocab(tmp_path)}, balance={"t": 2})
    assert check(cfg, tmp_path, caption_pool(tmp_path / "pool.parquet")) == []


def test_pool_embeddings_need_no_weights(tmp_path, no_weights):
    tag = {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    cfg = config(stages=["score", "aesthetic"], score=tag, aesthetic={"model": "vit_b_32"})
    assert check(cfg, tmp_path, emb_pool(tmp_path / "emb.parquet")) == []
    # only image embeddings: score needs its model (and images), the head does not
    cfg = config(stages=["score"], score=tag)
    problems = check(cfg, tmp_path, emb_pool(tmp_path / "img.parquet", text=False))
    assert len(problems) == 2, problems
    assert problems[0].startswith("score.pretrained: ") and "laion2b_s34b_b79k" in problems[0]
    assert problems[1].startswith("score: needs images")
    # a named score column the pool lacks is the key's own line
    cfg = config(stages=["score"], score={"pool_score_column": "nope"})
    assert [p.split(":")[0] for p in check(cfg, tmp_path, emb_pool(tmp_path / "e.parquet"))
            ] == ["score.pool_score_column"]


def test_pool_columns_are_read_as_ingest_maps_them(tmp_path):
    d = TINY["embed_dim"]
    fsl = pa.FixedSizeListArray.from_arrays(pa.array([0.5] * d, pa.float32()), d)
    pq.write_table(pa.table({"URL": ["http://127.0.0.1:9/a.jpg"], "TEXT": ["a dog here"],
                             "EMB": fsl}), str(tmp_path / "p.parquet"))
    cfg = config(stages=["aesthetic"], pool={"columns": {"url": "URL", "caption": "TEXT",
                                                          "image_emb": "EMB"}})
    assert check(cfg, tmp_path, str(tmp_path / "p.parquet")) == []
    cfg = config(stages=["aesthetic"], pool={"columns": {"caption": "TEXT"}})
    assert [p.split(":")[0] for p in check(cfg, tmp_path, str(tmp_path / "p.parquet"))
            ] == ["aesthetic"]  # EMB is not image_emb unless mapped
    problems = check(cfg, tmp_path, str(tmp_path / "nowhere.parquet"))
    assert len(problems) == 1 and problems[0].startswith("pool ") and "nowhere" in problems[0]


def test_several_problems_are_several_lines_and_exit_2(tmp_path, no_weights, no_ray):
    from curate.driver import run_pipeline

    missing = tmp_path / "missing"
    cfg = config(stages=["download", "score", "match", "aesthetic"],
                 download={"denylist": {"sha1": f"{missing}.sha1", "pdq": f"{missing}.pdq"}},
                 score={"model": "ViT-B-32", "pretrained": "openai"},
                 match={"metadata": f"{missing}.txt"},
                 aesthetic={"model": f"{missing}.pth"})
    with pytest.raises(ConfigError) as err:
        run_pipeline(cfg, str(tmp_path / "run"), pool=caption_pool(tmp_path / "pool.parquet"))
    assert isinstance(err.value, CurateError) and err.value.exit_code == 2
    lines = str(err.value).splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "download.denylist.sha1", "download.denylist.pdq", "score.pretrained",
        "match.metadata", "aesthetic.model"], lines
    assert not (tmp_path / "run" / "images").exists()
