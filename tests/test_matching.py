"""MetaCLIP substring matching: the rules case by case, then equivalence on real-ish data."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import ahocorasick
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.algorithms.matching import Matcher, entry_key, naive_match, spacing

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ENGINES = ["tokens", "ahocorasick"]


def match(entries, texts, boundary="metaclip1", engine="tokens"):
    """Matcher output as entry strings per caption, checked against naive_match."""
    got = Matcher(entries, boundary=boundary, engine=engine).match(texts).to_pylist()
    assert got == naive_match(texts, entries, boundary)
    return [[entries[i] for i in ids] for ids in got]


def test_spacing_is_metaclip_v1():
    assert spacing("a,b.c;d:e?f!g`h") == " a , b . c ; d : e ? f ! g ` h "
    assert spacing("tab\tnew\nline\rcr") == " tab new line cr "
    kept = "  Keep  CASE - and (other) 'punct'  "
    assert spacing(kept) == " " + kept + " "
    assert spacing("") == "  "


@pytest.mark.parametrize("engine", ENGINES)
def test_case_sensitive(engine):
    assert match(["dog", "Dog"], ["a Dog and a DOG"], engine=engine) == [["Dog"]]


@pytest.mark.parametrize("engine", ENGINES)
def test_punctuation_is_spaced(engine):
    entries = ["car", "dog", "dog-friendly", "what", "c++"]
    texts = ["my car.", "dog-friendly cafe", "car,dog;what?", "c++!", "cars"]
    assert match(entries, texts, engine=engine) == [
        ["car"], ["dog-friendly"], ["car", "dog", "what"], ["c++"], []]


@pytest.mark.parametrize("engine", ENGINES)
def test_whitespace_is_not_collapsed(engine):
    entries = ["hot dog", "dog", "hot"]
    # a double space breaks the bigram; tab/newline/CR become single spaces
    texts = ["hot  dog", "hot\tdog", "hot\ndog", "hot\r\ndog"]
    assert match(entries, texts, engine=engine) == [
        ["dog", "hot"], ["hot dog", "dog", "hot"], ["hot dog", "dog", "hot"], ["dog", "hot"]]


@pytest.mark.parametrize("engine", ENGINES)
def test_entries_with_punctuation_digits_and_spaces(engine):
    entries = ["St. Louis", "St", "Louis", "3", "3D", "2 3", "rock 'n' roll", "a  b", " x"]
    texts = ["St. Louis in 3D", "1 2 3 4", "rock 'n' roll", "a  b", "y  x z", " x"]
    assert match(entries, texts, engine=engine) == [
        ["St", "Louis", "3D"], ["3", "2 3"], ["rock 'n' roll"], ["a  b"], [" x"], [" x"]]


@pytest.mark.parametrize("engine", ENGINES)
def test_overlapping_and_repeated_entries(engine):
    entries = ["hot", "hot dog", "dog", "a hot dog stand", "dog stand"]
    got = match(entries, ["a hot dog", "hot dog hot dog", "a hot dog stand"], engine=engine)
    assert got == [["hot", "hot dog", "dog"], ["hot", "hot dog", "dog"], entries]


@pytest.mark.parametrize("engine", ENGINES)
def test_non_ascii(engine):
    entries = ["café", "naïve art", "Köln", "собака", "🐶"]
    texts = ["Café in Köln", "naïve art. собака!", "🐶🐶 🐶"]
    assert match(entries, texts, engine=engine) == [["Köln"], ["naïve art", "собака"], ["🐶"]]


@pytest.mark.parametrize("engine", ENGINES)
def test_cjk_boundaries(engine):
    entries = ["猫", "東京", "ข้าว", "ネコ", "東京 tower", "cat 猫"]
    texts = ["猫がいる", "東京タワー", "ข้าวผัด", "かわいいネコ", "東京 tower", "cat 猫", "a 猫 b"]
    v1 = match(entries, texts, "metaclip1", engine)
    assert v1 == [[], [], [], [], ["東京", "東京 tower"], ["猫", "cat 猫"], ["猫"]]
    v2 = match(entries, texts, "no_space_scripts", engine)
    assert v2 == [["猫"], ["東京"], ["ข้าว"], ["ネコ"], ["東京", "東京 tower"],
                  ["猫", "cat 猫"], ["猫"]]
    # (curate's variant: kana count; MetaCLIP 2's exact rule is tested in test_metaclip2.py)
    # a Latin side keeps the v1 rule: "cat 猫" needs a space before "cat"
    got = match(["cat 猫"], ["tomcat 猫", "cat 猫咪"], "no_space_scripts", engine)
    assert got == [[], ["cat 猫"]]
    assert entry_key("東京 tower", "no_space_scripts") == "東京 tower "


@pytest.mark.parametrize("engine", ENGINES)
def test_null_empty_and_separator_captions(engine):
    entries = ["dog", "hot dog"]
    texts = [None, "", " ", "dog\x00dog", "\x00 dog \x00", "hot\x00 dog", "dog", "\x00", None]
    got = Matcher(entries, engine=engine).match(texts).to_pylist()
    assert got == [[], [], [], [], [0], [0], [0], [], []]
    assert got == naive_match(texts, entries)
    # Arrow input, chunked, with nulls; all-null and empty inputs
    chunked = pa.chunked_array([pa.array(texts[:4]), pa.array(texts[4:])])
    assert Matcher(entries, engine=engine).match(chunked).to_pylist() == got
    assert Matcher(entries, engine=engine).match(pa.nulls(3)).to_pylist() == [[], [], []]
    assert Matcher(entries, engine=engine).match([]).to_pylist() == []


def test_output_type_and_batches():
    m = Matcher(["b", "a", "c"])
    out = m.match(["c a b a", "x"] * 5, batch_size=3)
    assert out.type == pa.list_(pa.int32())
    assert out.null_count == 0
    assert out.to_pylist() == [[0, 1, 2], []] * 5


def test_empty_vocabulary_matches_nothing():
    assert Matcher([]).match(["a dog", None]).to_pylist() == [[], []]


def test_bad_entries_and_options():
    with pytest.raises(ValueError, match="duplicates entry 0"):
        Matcher(["dog", "cat", "dog"])
    with pytest.raises(ValueError, match="empty or only spaces"):
        Matcher(["dog", "  "])
    with pytest.raises(ValueError, match="not a string"):
        Matcher(["dog", None])
    with pytest.raises(ValueError, match="valid: metaclip1, metaclip2, no_space_scripts"):
        Matcher(["dog"], boundary="v3")
    with pytest.raises(ValueError, match="valid: tokens, ahocorasick"):
        Matcher(["dog"], engine="regex")


@pytest.mark.parametrize("engine", ENGINES)
def test_pickle_round_trip(engine):
    entries = ["hot", "hot dog", "dog", "猫"]
    m = Matcher(entries, boundary="metaclip2", engine=engine)
    m2 = pickle.loads(pickle.dumps(m))
    texts = ["a hot dog 猫猫", None]
    assert m2.match(texts).to_pylist() == m.match(texts).to_pylist() == [[0, 1, 2, 3], []]


# --------------------------------------------------------------------------- equivalence


def _real_captions() -> list[str] | None:
    flickr = SHARED / "captions" / "flickr8k_captions.parquet"
    pool = SHARED / "pools" / "web_alt_text_10k.parquet"
    if not (flickr.is_file() and pool.is_file()):
        return None
    caps = pq.read_table(flickr, columns=["caption"]).column(0).to_pylist()
    rng = random.Random(0)
    texts = rng.sample(caps, 1500)
    texts += pq.read_table(pool, columns=["TEXT"]).column(0).to_pylist()[:1500]
    return texts


def _synthetic_captions(n: int, rng: random.Random) -> list[str]:
    words = ("a dog cat hot car red blue man woman child girl boy street park in on the of "
             "with and is are running New York St Louis 3D 2 10 café Köln naïve 猫 東京 ข้าว "
             "dog-friendly T-shirt rock 'n' roll").split()
    seps = [" "] * 12 + ["  ", "\t", "\n", ", ", ". ", "; ", ": ", "? ", "! ", "`", " - "]
    out = []
    for _ in range(n):
        k = rng.randint(0, 14)
        parts = []
        for _ in range(k):
            w = rng.choice(words)
            w = w.capitalize() if rng.random() < 0.15 else w
            parts.append(w + rng.choice(seps))
        out.append("".join(parts) + rng.choice(["", ".", "!", " \x00"]))
    return out


def _vocabulary_from(texts: list[str], rng: random.Random, size: int) -> list[str]:
    """Words, bigrams and trigrams of the texts, some case-flipped, cut or punctuated."""
    pool: set[str] = set()
    for t in texts:
        if not t:
            continue
        toks = spacing(t).split()
        for i in range(len(toks)):
            pool.add(toks[i])
            if i + 1 < len(toks):
                pool.add(f"{toks[i]} {toks[i + 1]}")
            if i + 2 < len(toks) and rng.random() < 0.1:
                pool.add(f"{toks[i]} {toks[i + 1]} {toks[i + 2]}")
    pool = sorted(pool)
    vocab = set(rng.sample(pool, min(size, len(pool))))
    for e in rng.sample(pool, min(size // 10, len(pool))):
        vocab.add(e.swapcase())
        vocab.add(e[: max(1, len(e) // 2)])
        vocab.add(e + ".")
    return sorted(e for e in vocab if e.strip(" "))


@pytest.mark.parametrize("source", ["real", "synthetic"])
def test_equals_naive_on_thousands_of_captions(source):
    rng = random.Random(1)
    texts = _real_captions() if source == "real" else _synthetic_captions(3000, rng)
    if texts is None:  # no shared data (a user's clone): synthetic captions instead
        texts = _synthetic_captions(3000, rng)
    vocab = _vocabulary_from(texts, rng, 1500)
    rng.shuffle(vocab)
    texts = texts + [None, "", "\x00"]
    for boundary in ("metaclip1", "metaclip2", "no_space_scripts"):
        expected = naive_match(texts, vocab, boundary)
        for engine in ENGINES:
            got = Matcher(vocab, boundary=boundary, engine=engine).match(texts).to_pylist()
            bad = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
            assert not bad, (boundary, engine, texts[bad[0]], got[bad[0]], expected[bad[0]])
    assert sum(map(len, expected)) > len(texts)  # the test matches something


def test_equals_metaclip_automaton_loop_on_default_vocabulary():
    """With the ~460k-entry default vocabulary, equal to MetaCLIP's per-caption loop."""
    from curate.vocab import load_vocabulary

    vocab = load_vocabulary("default")
    rng = random.Random(2)
    texts = _real_captions() or _synthetic_captions(3000, rng)
    automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
    for i, e in enumerate(vocab):
        automaton.add_word(" " + e + " ", i)
    automaton.make_automaton()
    expected = [sorted({i for _, i in automaton.iter(spacing(t))}) for t in texts]
    assert Matcher(vocab).match(texts).to_pylist() == expected
    assert sum(map(len, expected)) > 3 * len(texts)


def test_never_matches_is_sound():
    """An entry never_matches calls unmatchable is a substring of no spaced caption (every
    caption of up to 5 characters over an alphabet of letters, spaces and the characters
    spacing() touches), and the known cases go both ways."""
    import itertools

    from curate.algorithms.matching import never_matches

    alphabet = "ab .,\t"
    captions = ["".join(p) for n in range(1, 6) for p in itertools.product(alphabet, repeat=n)]
    spaced = [spacing(c) for c in captions]
    entries = {"".join(p) for n in range(1, 4) for p in itertools.product(alphabet, repeat=n)}
    entries = sorted(e for e in entries if e.strip(" "))
    for e in entries:
        if never_matches(e):
            assert not any(f" {e} " in s for s in spaced), e
    assert never_matches("St. Bernard") and never_matches("a\tb")
    assert not never_matches("tench") and not never_matches("a . b")
    assert any(" a . b " in s for s in spaced)  # "a.b" spaced: never_matches must say no


def test_code_table_equals_a_dict():
    """The trie's child lookup: every code maps to its value, absent codes to -1, also
    with codes crowded into one region of the table (long probe runs)."""
    import numpy as np

    from curate.algorithms.codetable import CodeTable

    rng = np.random.default_rng(0)
    for codes in (rng.choice(10**12, 5000, replace=False),
                  np.arange(3000) << 40,  # Fibonacci hashing must still spread these
                  np.array([0, 1, 2**62]), np.zeros(0, np.int64)):
        codes = codes.astype(np.int64)
        values = rng.integers(0, 2**31, codes.size).astype(np.int32)
        table = CodeTable(codes, values)
        want = dict(zip(codes.tolist(), values.tolist()))
        queries = np.concatenate([codes, rng.integers(0, 10**12, 2000), codes[:50] + 1])
        got = table.get(queries.astype(np.int64))
        assert got.tolist() == [want.get(q, -1) for q in queries.tolist()]


def test_token_ids_equal_a_dict_oracle():
    """The trie's token lookup (distinct tokens against a dict built once, not
    ``pc.index_in``) gives each token its vocabulary id: the tokens of the entries numbered
    in order of first appearance; unknown tokens, the empty token of an empty caption or a
    double space give -1. Also through a pickle (the dict is dropped and rebuilt), and the
    whole match still equals the naive reference on nulls and empty captions."""
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)] + ["é", "猫", "a.b"]
    entries = sorted({" ".join(rng.sample(words[:200], rng.randint(1, 3))) for _ in range(400)})
    oracle: dict[str, int] = {}
    for e in entries:
        for t in e.split(" "):
            oracle.setdefault(t, len(oracle))
    captions = [None, "", " ", "w1  w2", "unknown"] + [
        " ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(500)]
    tokens = [t for c in captions if c is not None for t in spacing(c)[1:-1].split(" ")]
    m = Matcher(entries)
    for matcher in (m, m, pickle.loads(pickle.dumps(m))):
        got = matcher._trie.token_ids(pa.array(tokens, pa.large_string()))
        assert got.tolist() == [oracle.get(t, -1) for t in tokens]
        assert matcher.match(captions).to_pylist() == naive_match(captions, entries)
