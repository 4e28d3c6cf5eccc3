"""DataComp's text-based filter rule: a caption names an ImageNet-21k entity.

DataComp (``baselines/apply_filter.py``, ``does_contain_text_entity``) keeps a pair when some
word of ``caption.split()`` has, as its *first* NLTK WordNet synset
(``nltk.corpus.wordnet.synsets(word)[0]``), a synset whose ``offset()`` is in the list of
ImageNet-21k WordNet ids (``n01234567`` -> 1234567). This module reproduces that lookup
without NLTK, from WordNet 3.0's ``index.*`` and ``*.exc`` files, following NLTK's
``WordNetCorpusReader.synsets`` and ``_morphy``:

- the word is lower-cased; parts of speech are tried in NLTK's ``POS_LIST`` order
  (noun, verb, adjective, adverb); the first one for which morphy finds a form gives the
  synset: the first offset listed for that form in ``index.<pos>`` (sense-rank order);
- morphy: if the word is in ``<pos>.exc``, only the word and its listed base forms are tried;
  else the word and one round of the detachment rules, then further rounds until a form is
  in the index (NLTK's ``MORPHOLOGICAL_SUBSTITUTIONS``).

Two quirks of the original are kept on purpose, because the point is the same kept set:
the offset is compared without its part of speech (a verb or adjective synset whose byte
offset in its own data file equals an ImageNet noun id counts), and any word — not only
nouns — can match. Pure code: the caller loads the files (:mod:`curate.vocab.in21k`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

#: NLTK's POS_LIST order
POS_ORDER = ("n", "v", "a", "r")

#: NLTK's WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS (adjective satellites share ADJ's)
SUBSTITUTIONS = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
          ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}


def parse_index(lines: Iterable[str]) -> dict[str, int]:
    """lemma -> first synset offset, from one ``index.<pos>`` file's lines.

    NLTK skips lines starting with a space (the licence header); each other line is
    ``lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt offset*``."""
    first: dict[str, int] = {}
    for line in lines:
        if line.startswith(" "):
            continue
        parts = line.split()
        if len(parts) < 6:
            continue
        n_pointers = int(parts[3])
        first[parts[0]] = int(parts[4 + n_pointers + 2])
    return first


def parse_exceptions(lines: Iterable[str]) -> dict[str, list[str]]:
    """inflected form -> base forms, from one ``<pos>.exc`` file's lines."""
    out: dict[str, list[str]] = {}
    for line in lines:
        terms = line.split()
        if terms:
            out[terms[0]] = terms[1:]
    return out


class FirstSynset:
    """``nltk.corpus.wordnet.synsets(word)[0].offset()``, or None when there is no synset.

    index: pos -> {lemma: first offset}; exceptions: pos -> {form: [base forms]}.
    Results are cached per word (captions repeat words)."""

    def __init__(self, index: dict[str, dict[str, int]],
                 exceptions: dict[str, dict[str, list[str]]]):
        missing = [p for p in POS_ORDER if p not in index]
        if missing:
            raise ValueError(f"FirstSynset: no index for part(s) of speech {missing}")
        self.index = index
        self.exceptions = {p: exceptions.get(p, {}) for p in POS_ORDER}
        self.offset = lru_cache(maxsize=1 << 20)(self._offset)

    def morphy(self, form: str, pos: str) -> list[str]:
        """NLTK's ``_morphy(form, pos)``: the forms of ``form`` that are lemmas of ``pos``.

        One departure that cannot change the result: each round's forms are deduplicated
        (first occurrence kept), so a pathological token cannot grow the list exponentially;
        NLTK's ``filter_forms`` keeps first occurrences too."""
        lemmas = self.index[pos]
        subs = SUBSTITUTIONS[pos]

        def apply_rules(forms: list[str]) -> list[str]:
            return list(dict.fromkeys(f[: -len(old)] + new for f in forms
                                      for old, new in subs if f.endswith(old)))

        def filter_forms(forms: list[str]) -> list[str]:
            return [f for f in dict.fromkeys(forms) if f in lemmas]

        exc = self.exceptions[pos]
        if form in exc:
            return filter_forms([form, *exc[form]])
        forms = apply_rules([form])
        results = filter_forms([form, *forms])
        if results:
            return results
        while forms:
            forms = apply_rules(forms)
            results = filter_forms(forms)
            if results:
                return results
        return []

    def _offset(self, word: str) -> int | None:
        lemma = word.lower()
        for pos in POS_ORDER:
            forms = self.morphy(lemma, pos)
            if forms:
                return self.index[pos][forms[0]]
        return None


def entity_match(caption: str | None, first: FirstSynset, ids: frozenset[int] | set[int]
                 ) -> tuple[str, int] | None:
    """(word, offset) of the first word of ``caption.split()`` whose first synset's offset
    is in ``ids``; None when no word has one (DataComp drops the pair). A null caption
    matches nothing."""
    if caption is None:
        return None
    for word in caption.split():
        off = first.offset(word)
        if off is not None and off in ids:
            return word, off
    return None


def parse_wnids(lines: Iterable[str]) -> frozenset[int]:
    """DataComp's ``load_uids_with_text_entity``: ``int(line.strip()[1:])`` per line
    (``n01234567`` -> 1234567); blank lines are skipped."""
    return frozenset(int(x.strip()[1:]) for x in lines if x.strip())
