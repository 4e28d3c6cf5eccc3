"""score.basic.word_rule: ``fasttext_tokens`` is ``len(fasttext.tokenize(text))``.

DataComp's image-based baseline filters captions with ``len(fasttext.tokenize(x)) > 1``
(mlfoundations/datacomp, ``baselines/apply_filter.py``, ``caption_filter``; fasttext==0.9.2).
The reference below re-implements fastText's tokenizer from its C++ source, independently
of curate: the pybind ``tokenize`` (python/fasttext_module/fasttext/pybind/fasttext_pybind.cc)
feeds the UTF-8 bytes of the string to a ``std::stringstream`` and calls
``Dictionary::readWord`` (src/dictionary.cc) until EOF. Where the real ``fasttext.tokenize``
is importable (the full ``fasttext`` package; ``fasttext-predict`` has no ``tokenize``) the
test checks against it too.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curate.stages.score_filters import BasicFilterConfig, basic_reasons, fasttext_token_counts

EOS = "</s>"
SEPARATORS = frozenset(b" \n\r\t\v\f\0")  # readWord's `c == ' ' || ... || c == '\0'`


def reference_tokenize(text: str) -> list[str]:
    """fastText's tokenize: readWord over a byte stream (sbumpc / sungetc), transcribed."""
    data = text.encode("utf-8")
    pos = 0
    tokens: list[str] = []
    eof = False
    while not eof:  # while (!ioss.eof())
        while True:  # while (d->readWord(ioss, token)) push_back
            word = bytearray()
            found = None
            while pos < len(data):
                c = data[pos]
                pos += 1
                if c in SEPARATORS:
                    if not word:
                        if c == 0x0A:
                            found = EOS.encode()
                            break
                        continue
                    if c == 0x0A:
                        pos -= 1  # sb.sungetc(): the newline is read again, as EOS
                    found = bytes(word)
                    break
                word.append(c)
            else:  # EOF: in.get() sets eofbit; return !word.empty()
                eof = True
                found = bytes(word) if word else None
            if found is None:
                break
            tokens.append(found.decode("utf-8"))
    return tokens


TRICKY = [
    "Sunset\n",  # DataComp keeps it: ["Sunset", "</s>"]
    "Golden\u00a0retriever",  # DataComp drops it: one token (NBSP is not a separator)
    "Golden retriever",
    "",
    " ",
    "\n",
    "\n\n\n",
    "a\n\nb",
    "\na\n",
    "  leading and trailing  ",
    "tab\tseparated\twords",
    "vertical\vtab",
    "form\ffeed",
    "carriage\rreturn",
    "crlf\r\nline",
    "nul\x00separated",
    "\x00",
    "em\u2003space",
    "ideographic\u3000space",
    "line\u2028separator",
    "next\x85line",
    "unit\x1fseparator",
    "zero\u200bwidth",
    "日本語のキャプション",
    "mixed 日本 \u3000 text\n",
    "emoji 🐕\n🐈",
    " \t\v\f\r\x00 ",
]


def test_reference_matches_the_documented_examples():
    assert reference_tokenize("Sunset\n") == ["Sunset", EOS]
    assert reference_tokenize("Golden\u00a0retriever") == ["Golden\u00a0retriever"]
    assert reference_tokenize("\n a \n") == [EOS, "a", EOS]
    assert reference_tokenize("") == []


def random_captions(n: int, seed: int = 0) -> list[str]:
    alphabet = list("ab ") + ["\n", "\r", "\t", "\v", "\f", "\x00", "\u00a0", "\u2003",
                              "\u3000", "\x1c", "\x85", "é", "語", "🐕"]
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(alphabet, int(rng.integers(0, 12)))) for _ in range(n)]


@pytest.mark.parametrize("arrow", [pa.array, lambda x: pa.chunked_array([x[:5], x[5:]])])
def test_fasttext_token_counts_equal_the_reference(arrow):
    captions = TRICKY + random_captions(2000)
    got = fasttext_token_counts(arrow(captions))
    want = [len(reference_tokenize(c)) for c in captions]
    assert got.tolist() == want


def test_null_caption_counts_zero():
    assert fasttext_token_counts(pa.array(["a b", None], pa.string())).tolist() == [2, 0]


def test_fasttext_token_counts_equal_the_real_fasttext():
    fasttext = pytest.importorskip("fasttext")
    if not hasattr(fasttext, "tokenize"):
        pytest.skip("this fasttext (fasttext-predict) has no tokenize")
    captions = TRICKY + random_captions(2000, seed=1)
    want = [len(fasttext.tokenize(c)) for c in captions]
    assert fasttext_token_counts(pa.array(captions)).tolist() == want


def caption_filter_words(captions: list[str]) -> list[bool]:
    """DataComp's caption_filter without the language rule: tokens > 1 and chars > 5."""
    return [len(reference_tokenize(c)) > 1 and len(c) > 5 for c in captions]


def test_basic_with_fasttext_tokens_is_datacomp_caption_filter():
    captions = TRICKY + random_captions(500, seed=2)
    cfg = BasicFilterConfig(min_caption_words=2, min_caption_chars=6,
                            word_rule="fasttext_tokens")
    zeros = np.zeros(len(captions))
    codes, details = basic_reasons(pa.array(captions), zeros, zeros, cfg)
    assert [c is None for c in codes] == caption_filter_words(captions)
    i = captions.index("Golden\u00a0retriever")
    assert codes[i] == "caption_too_few_words" and "fastText tokens" in details[i]
    assert codes[captions.index("Sunset\n")] is None


def test_python_split_stays_the_default():
    cfg = BasicFilterConfig(min_caption_words=2)
    assert cfg.word_rule == "python_split"
    captions = ["Sunset\n", "Golden\u00a0retriever"]
    codes, _ = basic_reasons(pa.array(captions), np.zeros(2), np.zeros(2), cfg)
    # str.split(): "Sunset\n" is one word, NBSP splits: the other way round from fastText
    assert codes == ["caption_too_few_words", None]


def test_default_word_rule_keeps_old_fingerprints():
    assert BasicFilterConfig(min_caption_words=2).model_dump() == {
        "min_caption_words": 2, "min_caption_chars": 0, "min_image_side": 0,
        "max_aspect_ratio": None}
    assert BasicFilterConfig(word_rule="fasttext_tokens").model_dump()["word_rule"] == (
        "fasttext_tokens")


def test_bad_word_rule_is_a_config_error():
    with pytest.raises(ValueError, match="word_rule"):
        BasicFilterConfig(word_rule="whitespace")


def test_datacomp_image_based_yaml_counts_fasttext_tokens():
    from pathlib import Path

    from curate.stages.registry import load_pipeline

    root = Path(__file__).resolve().parents[1]
    basic = load_pipeline(root / "pipelines" / "datacomp_image_based.yaml").score.basic
    assert (basic.word_rule, basic.min_caption_words, basic.min_caption_chars) == (
        "fasttext_tokens", 2, 6)
