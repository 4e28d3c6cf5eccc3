"""MetaCLIP 2 worldwide: the exact matcher, per-language t, per-language match and balance.

The references here are written from MetaCLIP 2's released code (facebookresearch/MetaCLIP,
``metaclip/curation/substr_matching.py`` and ``curate.py``), transcribed in this file, not
taken from curate's modules: t_to_p, p_to_t, count_to_prob, is_cjk_or_similar,
get_spaced_metadata, spacing and the pyahocorasick matching loop.
"""

from __future__ import annotations

import json
import random
import re
import string
import sys
from collections import Counter

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import read_parts

from curate.algorithms.balancing import keep_prob
from curate.algorithms.balancing_languages import (
    language_thresholds,
    p_to_t,
    pair_language,
    t_to_p,
)
from curate.algorithms.matching import Matcher, naive_match
from curate.algorithms.matching_languages import LanguageMatcher, naive_language_match
from curate.algorithms.matching_metaclip2 import PY_WHITESPACE
from curate.errors import CurateError
from curate.vocab import load_metadata

ENGINES = ["tokens", "ahocorasick"]

# --------------------------------------------------------------------------- references


def ref_t_to_p(entry_counts, t):
    return float(entry_counts[entry_counts < t].sum() / entry_counts.sum())


def ref_p_to_t(entry_counts, p):
    counts = np.sort(entry_counts)
    portion = np.cumsum(counts) / counts.sum()
    return counts[(np.abs(portion - p)).argmin()]


def ref_count_to_prob(entry_count, t):
    c = np.array(entry_count)
    c[c < t] = t
    with np.errstate(invalid="ignore"):  # t = 0 and count 0: nan, as in MetaCLIP 2
        return t / c


REF_ADDITIONAL = ["，", "。", "、", "；", "：", "？", "！", "“", "”", "‘", "’", "（", "）",
                  "【", "】", "《", "》", "〈", "〉", "「", "」", "『", "』", "～", "—"]


def ref_is_cjk_or_similar(char):
    cp = ord(char)
    if (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F
            or 0x2B820 <= cp <= 0x2CEAF or 0x2CEB0 <= cp <= 0x2EBEF
            or 0xF900 <= cp <= 0xFAFF or 0x2E80 <= cp <= 0x2EFF or 0x2F00 <= cp <= 0x2FDF
            or 0x2FF0 <= cp <= 0x2FFF):
        return True
    if (0x0E00 <= cp <= 0x0E7F or 0x0E80 <= cp <= 0x0EFF or 0x1000 <= cp <= 0x109F
            or 0x1780 <= cp <= 0x17FF or 0x0F00 <= cp <= 0x0FFF):
        return True
    return char in string.punctuation or char in REF_ADDITIONAL


def ref_spacing(text):
    spaced = f" {text} "
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(p, f" {p} ")
    for c in ["\t", "\n", "\r"]:
        spaced = spaced.replace(c, " ")
    return spaced


def ref_automaton(metadata):
    automaton = ahocorasick.Automaton()
    for idx, entry in enumerate(metadata):  # get_spaced_metadata + initialize_automaton
        key = entry
        if not ref_is_cjk_or_similar(key[0]):
            key = f" {key}"
        if not ref_is_cjk_or_similar(key[-1]):
            key = f"{key} "
        automaton.add_word(key, (idx, key))
    automaton.make_automaton()
    return automaton


def ref_match(texts, metadata):
    """count_per_shard's loop: txt.strip(), spacing, automaton.iter, a set of ids."""
    automaton = ref_automaton(metadata)
    out = []
    for txt in texts:
        if txt is None:
            out.append([])
            continue
        ids = {i for _, (i, _) in automaton.iter(ref_spacing(txt.strip()))}
        out.append(sorted(ids))
    return out


# --------------------------------------------------------------------------- matcher


def test_python_whitespace_set():
    assert set(PY_WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1)
                                  if chr(c).isspace()}


@pytest.mark.parametrize("engine", ENGINES)
def test_metaclip2_rules_case_by_case(engine):
    entries = ["猫", "東京", "ข้าว", "ネコ", "東京 tower", "cat 猫", "(film)", "C++", "dog",
               "'s", "かわいい", "猫。", "New York"]
    texts = ["猫がいる", "東京タワー", "ข้าวผัด", "かわいいネコ", "a ネコ b", "東京 tower",
             "tomcat 猫", "Matrix(film)", "C++!", "dog\u3000", "\u3000dog", "it's",
             "かわいい猫。です", "New York\u00a0", "dog\x1c"]
    got = Matcher(entries, boundary="metaclip2", engine=engine).match(texts).to_pylist()
    assert got == ref_match(texts, entries) == naive_match(texts, entries, "metaclip2")
    named = [[entries[i] for i in ids] for ids in got]
    assert named[0] == ["猫"] and named[1] == ["東京"] and named[2] == ["ข้าว"]
    assert named[3] == [] and named[4] == ["ネコ"]  # kana is not "CJK or similar"
    assert named[7] == ["(film)"] and named[8] == ["C++"] and named[11] == ["'s"]
    assert named[9] == named[10] == ["dog"] and named[14] == ["dog"]  # captions are stripped
    assert named[13] == ["New York"]


def _mixed_captions(n, rng):
    words = ("a dog cat hot car red New York 猫 東京 タワー ネコ かわいい ข้าว ผัด Köln "
             "(film) C++ it's 's dog-friendly 3D 「本」 《书》 —").split()
    seps = [" "] * 10 + ["", "  ", "\t", "\n", ", ", ". ", "。", "、", "! ", "\u3000", "\xa0"]
    out = []
    for _ in range(n):
        parts = [rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 10))]
        out.append(rng.choice(["", " ", "\u3000", "\x1c"]) + "".join(parts)
                   + rng.choice(["", ".", " ", "\u3000", "\u2028"]))
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_metaclip2_equals_reference_loop_on_mixed_scripts(engine):
    rng = random.Random(7)
    texts = _mixed_captions(2000, rng) + [None, "", "\u3000"]
    pool = sorted({w for t in texts if t for w in t.split()} | {"猫", "ネコ", "(film)", "—"})
    vocab = sorted(set(rng.sample(pool, min(300, len(pool)))) | {"New York", "東京 タワー"})
    got = Matcher(vocab, boundary="metaclip2", engine=engine).match(texts).to_pylist()
    expected = ref_match(texts, vocab)
    bad = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert not bad, (texts[bad[0]], got[bad[0]], expected[bad[0]])
    assert sum(map(len, expected)) > len(texts) // 2  # the test matches something


@pytest.mark.parametrize("fallback", ["other", None])
def test_language_matcher_routes_by_language(fallback):
    vocabs = {"en": ["dog", "cat", "red car"], "de": ["Hund", "Katze", "dog"],
              "ja": ["猫", "犬"]}
    if fallback:
        vocabs["other"] = ["chat", "dog"]
    texts = ["a dog and a cat", "ein Hund, ein dog", "猫と犬", "le chat", "a dog", None, "猫"]
    langs = ["en", "de", "ja", "fr", None, "en", ""]
    m = LanguageMatcher(vocabs, boundary="metaclip2")
    got = m.match(texts, langs).to_pylist()
    assert got == naive_language_match(texts, langs, vocabs, "metaclip2")
    off = dict(zip(sorted(vocabs), np.cumsum([0] + [len(vocabs[k]) for k in sorted(vocabs)])))
    assert got[0] == [off["en"], off["en"] + 1]
    assert got[1] == [off["de"], off["de"] + 2]  # de's own "dog", not en's
    assert got[2] == [off["ja"], off["ja"] + 1]
    if fallback:
        assert got[3] == [off["other"]] and got[4] == [off["other"] + 1]
    else:
        assert got[3] == got[4] == got[6] == []
    ids = m.match(texts, langs)
    assert pair_language(ids, m.offsets).tolist()[:3] == [
        sorted(vocabs).index("en"), sorted(vocabs).index("de"), sorted(vocabs).index("ja")]


# --------------------------------------------------------------------------- per-language t


def _zipf(n, scale, rng, zeros):
    c = (scale / np.arange(1, n + 1) ** 1.1).astype(np.uint64)
    c = np.concatenate([c, np.zeros(zeros, np.uint64)])
    rng.shuffle(c)
    return c


@pytest.mark.parametrize("t_en", [3, 50, 170, 1000, 20_000])
def test_per_language_t_equals_direct_rule_on_zipf_counts(t_en):
    rng = np.random.default_rng(0)
    counts = {"en": _zipf(5000, 2e5, rng, 300), "de": _zipf(3000, 3e4, rng, 500),
              "ja": _zipf(800, 5e3, rng, 50), "sw": _zipf(40, 90, rng, 10),
              "xx": np.zeros(7, np.uint64)}
    got = language_thresholds(counts, t_en)
    p = ref_t_to_p(counts["en"], t_en)
    assert got["en"] == (t_en, p)
    assert got["xx"] == (None, None)
    for lang in ("de", "ja", "sw"):
        t = ref_p_to_t(counts[lang], p)
        assert got[lang][0] == int(t)
        assert int(t) in counts[lang].tolist()  # t is an existing count
        assert got[lang][1] == ref_t_to_p(counts[lang], t)
        assert p_to_t(counts[lang], p) == int(t) and t_to_p(counts[lang], t_en) == \
            ref_t_to_p(counts[lang], t_en)
        # the balancing probabilities are count_to_prob's
        probs = keep_prob(pa.array([[i] for i in range(counts[lang].size)],
                                   pa.list_(pa.int32())),
                          counts[lang].astype(np.int64), np.full(counts[lang].size, float(t)))
        ref = ref_count_to_prob(counts[lang], t)
        nz = counts[lang] > 0
        np.testing.assert_allclose(probs[nz], ref[nz], rtol=1e-6)


def test_a_language_can_get_t_zero_and_keep_nothing():
    en = np.array([1, 2, 3, 100, 1000], np.int64)
    lone = np.array([0, 0, 0, 0, 500], np.int64)  # one entry holds every match
    got = language_thresholds({"en": en, "lone": lone}, t_en=2)
    assert got["lone"][0] == ref_p_to_t(lone, ref_t_to_p(en, 2)) == 0
    ids = pa.array([[4], [4]], pa.list_(pa.int32()))
    assert keep_prob(ids, lone, np.zeros(5)).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="no counts for 'en'"):
        language_thresholds({"de": lone}, 2)
    with pytest.raises(ValueError, match="has no matches"):
        language_thresholds({"en": np.zeros(3), "de": lone}, 2)


# --------------------------------------------------------------------------- pipeline

VOCABS = {"en": ["dog", "cat", "red car", "tree", "photo"],
          "de": ["Hund", "Katze", "rotes Auto", "Baum", "Foto"],
          "ja": ["猫", "犬", "東京", "写真"],
          "other": ["chien", "chat"]}


def _pool(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lang = rng.choices(["en", "de", "ja", "fr", None], [50, 25, 15, 8, 2])[0]
        key = lang if lang in VOCABS else "other"
        words = VOCABS[key]
        w = rng.choices(words, [40, 20, 8, 4, 2][:len(words)])[0]
        sep = "" if key == "ja" else " "
        rows.append({"caption": f"{w}{sep}{rng.choice(words)}{sep}#{i}", "lang": lang})
    rows.append({"caption": "nothing here", "lang": "en"})
    return rows


def _write_vocabs(tmp_path):
    out = {}
    for lang, words in VOCABS.items():
        p = tmp_path / f"{lang}.txt"
        p.write_text("\n".join(words) + "\n")
        out[lang] = str(p)
    return out


def test_per_language_pipeline(tmp_path, ray_session):
    from curate.app.plan import plan_run
    from curate.driver import run_pipeline

    rows = _pool(600)
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pool)
    meta_files = _write_vocabs(tmp_path)
    cfg = base_config(stages=["match", "balance", "report"], pool={"shard_size": 150},
                      match={"metadata": meta_files, "boundary": "metaclip2"},
                      balance={"t": 20, "seed": 1, "per_language": True})
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=str(pool))

    meta = load_metadata(meta_files)
    assert meta.languages == ("de", "en", "ja", "other")
    m = read_parts(out / "match")
    p = read_parts(out / "pool")
    assert m["uid"].equals(p["uid"])
    assert m["entry_ids"].to_pylist() == naive_language_match(
        p["caption"].to_pylist(), p["lang"].to_pylist(), VOCABS, "metaclip2")

    counts = pq.read_table(out / "balance" / "entry_counts.parquet")
    assert counts.column_names == ["entry_id", "lang", "entry", "count"]
    assert counts["entry"].to_pylist() == meta.entries
    assert counts["lang"].to_pylist() == meta.entry_langs()
    c = counts["count"].to_numpy()
    flat = pc.list_flatten(m["entry_ids"]).to_numpy()
    assert c.tolist() == np.bincount(flat, minlength=c.size).tolist()

    lt = pq.read_table(out / "balance" / "language_t.parquet").to_pylist()
    off = meta.offsets
    per = {lang: c[off[k]:off[k + 1]] for k, lang in enumerate(meta.languages)}
    pen = ref_t_to_p(per["en"], 20)
    want = {"en": 20, **{x: int(ref_p_to_t(per[x], pen)) for x in ("de", "ja", "other")}}
    assert {r["lang"]: r["t"] for r in lt} == want
    assert {r["lang"]: r["tail_fraction"] for r in lt} == pytest.approx(
        {x: ref_t_to_p(per[x], want[x]) for x in want})

    # every pair's P(keep) uses its own language's t
    b = read_parts(out / "balance")
    assert b["uid"].equals(m["uid"])
    t_of = {k: want[lang] for k, lang in enumerate(meta.languages)}
    expect = []
    for ids in m["entry_ids"].to_pylist():
        if not ids:
            expect.append(0.0)
            continue
        k = int(np.searchsorted(off, ids[0], side="right") - 1)
        expect.append(1 - np.prod([1 - min(1, t_of[k] / c[i]) for i in ids]))
    np.testing.assert_allclose(b["keep_prob"].to_numpy(), expect, rtol=1e-5)
    reasons = set(b.filter(pc.invert(b["kept"]))["reason"].to_pylist())
    assert reasons <= {"no_metadata_match", "not_sampled"} and "no_metadata_match" in reasons

    # which languages fell to `other`, with pair counts, in balance's count step info
    manifest = json.loads((out / "run.json").read_text())
    to_other = manifest["stages"]["balance"]["steps"]["count"]["info"]["to_other"]
    want_other = Counter("(none)" if r["lang"] in (None, "") else r["lang"]
                         for r in rows if r["lang"] not in VOCABS)
    assert to_other == {"pairs": sum(want_other.values()), "other_list": True,
                        "languages": dict(want_other)}
    assert set(want_other) == {"fr", "(none)"}

    # the report names entries by global id
    conc = pq.read_table(out / "reports" / "concept_frequency.parquet")
    assert conc["entry"].to_pylist() == [meta.entries[i] for i in conc["entry_id"].to_pylist()]
    assert conc["count_pool"].to_pylist() == c[conc["entry_id"].to_numpy()].tolist()

    plan = plan_run(str(out), target=None, png=str(tmp_path / "plan.png"))
    rows_now = {r["lang"]: r for r in plan["languages"]["configured"]}
    assert {x: r["t"] for x, r in rows_now.items()} == want
    assert sum(r["expected"] for r in rows_now.values()) == pytest.approx(sum(expect))
    target = 0.5 * sum(expect)
    plan = plan_run(str(out), target=target, png=str(tmp_path / "plan.png"))
    assert plan["t_for_target"] >= 1 and "target" in plan["languages"]


PLUGIN = '''
import pyarrow as pa
from curate.stages.base import Stage


class Lid(Stage):
    """A stand-in language stage: the label is the caption's prefix before ':'."""

    kind = "language"
    folder = "language"
    schema = pa.schema([("uid", pa.string()), ("lang", pa.string()),
                        ("lang_score", pa.float32())])
    pool_columns = ["uid", "caption"]

    def process(self, shard, inputs):
        langs = [c.split(":", 1)[0] for c in inputs["caption"].to_pylist()]
        return pa.table({"uid": inputs["uid"], "lang": pa.array(langs, pa.string()),
                         "lang_score": pa.array([1.0] * len(langs), pa.float32())})
'''


def test_lang_from_language_stage_and_missing_lang(tmp_path, ray_session):
    from curate.driver import run_pipeline

    plugin = tmp_path / "lid.py"
    plugin.write_text(PLUGIN)
    caps = ["en: a dog", "de: ein Hund", "ja: 猫がいる", "de: a Katze", "fr: le chat"]
    pool = tmp_path / "pool.parquet"
    # the pool's own lang column is wrong on purpose: the language stage wins
    pq.write_table(pa.table({"caption": caps, "lang": ["xx"] * len(caps)}), pool)
    meta_files = _write_vocabs(tmp_path)
    cfg = base_config(stages=["lid", "match", "balance"], lid={"kind": f"{plugin}:Lid"},
                      match={"metadata": meta_files, "boundary": "metaclip2"})
    run_pipeline(cfg, str(tmp_path / "run"), pool=str(pool))
    m = read_parts(tmp_path / "run" / "match")
    langs = [c.split(":")[0] for c in caps]
    assert m["entry_ids"].to_pylist() == naive_language_match(caps, langs, VOCABS, "metaclip2")
    assert all(m["entry_ids"].to_pylist())  # fr -> other ("chat")
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    info = manifest["stages"]["balance"]["steps"]["count"]["info"]
    assert info["to_other"] == {"pairs": 1, "other_list": True, "languages": {"fr": 1}}

    pq.write_table(pa.table({"caption": caps}), pool)
    cfg = base_config(stages=["match"], match={"metadata": meta_files})
    with pytest.raises(CurateError, match="no `lang` column"):
        run_pipeline(cfg, str(tmp_path / "run2"), pool=str(pool))
    no_en = {k: v for k, v in meta_files.items() if k != "en"}
    cfg = base_config(stages=["lid", "match", "balance"], lid={"kind": f"{plugin}:Lid"},
                      match={"metadata": no_en}, balance={"per_language": True})
    with pytest.raises(CurateError, match="`en` among them"):
        run_pipeline(cfg, str(tmp_path / "run3"), pool=str(pool))


def test_per_language_false_keeps_old_fingerprints():
    from curate.stages.balance import BalanceConfig

    assert BalanceConfig(t=5).model_dump() == {"t": 5, "seed": 0}
    assert BalanceConfig(t=5, per_language=True).model_dump()["per_language"] is True


def test_metadata_ids_are_global_in_sorted_language_order(tmp_path):
    from curate.stages.match import MatchConfig
    from curate.vocab import load_vocabulary

    files = _write_vocabs(tmp_path)
    shuffled = {k: files[k] for k in ("ja", "other", "en", "de")}
    meta = load_metadata(shuffled)
    assert meta.languages == ("de", "en", "ja", "other")
    assert meta.offsets.tolist() == [0, 5, 10, 14, 16]
    assert load_vocabulary(shuffled) == VOCABS["de"] + VOCABS["en"] + VOCABS["ja"] + \
        VOCABS["other"]
    assert meta.entry_langs()[5] == "en" and load_metadata(files["en"]).entry_langs() == [None] * 5
    for bad in ({}, {"": files["en"]}, {" en": files["en"]}):
        with pytest.raises(ValueError, match="match.metadata"):
            MatchConfig(metadata=bad)
    with pytest.raises(CurateError, match="match.metadata.de"):
        load_metadata({"en": files["en"], "de": str(tmp_path / "missing.txt")})


def test_worldwide_pipeline_file():
    from pathlib import Path

    from curate.stages.registry import load_pipeline

    cfg = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines"
                        / "metaclip2_worldwide.yaml")
    assert cfg.stages.index("language") < cfg.stages.index("match")
    assert cfg.section("match").boundary == "metaclip2" and "en" in cfg.section("match").metadata
    assert cfg.section("balance").per_language and cfg.section("balance").t == 170_000
    # every lid.176 label has its own list, except lrc and yue (no MetaCLIP 2 list: other)
    meta = cfg.section("match").metadata
    assert set(meta) == (LID176 - {"lrc", "yue"}) | {"other"}
    assert all(path == f"metadata/metaclip2/{lang}.json" for lang, path in meta.items())


#: fastText lid.176's labels, as its language-identification page lists them
LID176 = set("""af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca
cbk ce ceb ckb co cs cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl
gn gom gu gv he hi hif hr hsb ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv
kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap
nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh
si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu
xal xmf yi yo yue zh""".split())


def test_lid176_is_the_bundled_models_label_set():
    from curate.models.langid import labels, lite_path

    assert len(LID176) == 176 and set(labels(lite_path())) == LID176


def test_language_matcher_reads_only_the_languages_it_meets():
    read = []

    def loader(lang, words):
        return lambda: read.append(lang) or words

    vocabs = {"en": ["dog"], "de": ["Hund"], "ja": ["猫"]}
    m = LanguageMatcher({k: loader(k, v) for k, v in vocabs.items()}, sizes={"en": 1, "de": 1,
                                                                          "ja": 1})
    assert read == [] and m.offsets.tolist() == [0, 1, 2, 3]
    assert m.match(["a dog", "猫"], ["en", "ja"]).to_pylist() == [[1], [2]]
    assert sorted(read) == ["en", "ja"]
    bad = LanguageMatcher({"en": lambda: ["dog", "cat"]}, sizes={"en": 1})
    with pytest.raises(ValueError, match="2 entries, 1 expected"):
        bad.match(["dog"], ["en"])


def test_report_shows_head_and_tail_per_language(tmp_path, ray_session):
    """The report's language section lists each language's t and its head/tail entries,
    recomputed here from balance's files."""
    from curate.driver import run_pipeline

    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(_pool(300)), pool)
    cfg = base_config(stages=["match", "balance", "report"], pool={"shard_size": 150},
                      match={"metadata": _write_vocabs(tmp_path), "boundary": "metaclip2"},
                      balance={"t": 20, "seed": 1, "per_language": True})
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=str(pool))
    page = (out / "reports" / "report.html").read_text(encoding="utf-8")
    sec = page.split('<section id="languages">', 1)[1].split("</section>", 1)[0]
    fell = Counter("(none)" if r["lang"] is None else r["lang"] for r in _pool(300)
                   if r["lang"] not in VOCABS)
    order = sorted(fell.items(), key=lambda kv: (-kv[1], kv[0]))  # most pairs first
    listed = ", ".join(f"{k} {v:,}" for k, v in order)
    assert (f"matched against the `other` list: {sum(fell.values()):,} pairs in "
            f"{len(fell)} languages ({listed})") in sec
    counts = pq.read_table(out / "balance" / "entry_counts.parquet").to_pylist()
    for r in pq.read_table(out / "balance" / "language_t.parquet").to_pylist():
        mine = [c["count"] for c in counts if c["lang"] == r["lang"]]
        head = sum(1 for c in mine if r["t"] is not None and c > r["t"])
        matched = sum(1 for c in mine if c > 0)
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", sec.split(f"<td>{r['lang']}</td>", 1)[1])
        assert cells[2:5] == [f"{matched:,}", f"{head:,}", f"{matched - head:,}"], r
