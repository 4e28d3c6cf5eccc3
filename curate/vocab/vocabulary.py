"""Metadata vocabularies: read one list of entries from a file, describe it, write it.

The index of an entry in the list is its entry id everywhere downstream (match, balance,
reports), so loading is strict and stable: duplicates are dropped keeping the first
occurrence (ids follow first-occurrence order), and anything that is not a non-empty string
is an error naming the file and the item.

This is the file layer: it knows no languages and caches nothing. What a run loads (match,
balance and the report: one vocabulary, or one per language) goes through
:mod:`curate.vocab.languages`, which holds the one cache. Making a list is apart:
:mod:`curate.vocab.build` builds a MetaCLIP-like list offline and
:mod:`curate.vocab.metaclip` fetches MetaCLIP's own.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from curate.errors import InputError

logger = logging.getLogger(__name__)

#: Directory of the committed vocabularies (repository root / metadata).
METADATA_DIR = Path(__file__).resolve().parent / "data"
#: Built-in vocabulary names accepted by :func:`read_vocabulary`.
BUILTIN = {"default": "default_vocabulary.txt.gz"}


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


def stamp(path_or_name: str | os.PathLike) -> tuple:
    """What identifies a vocabulary's current content for a cache: (file, size, mtime) of
    the file a path or built-in name resolves to; (name,) when there is none (reading it
    then names the problem)."""
    name = os.fspath(path_or_name)
    path = METADATA_DIR / BUILTIN[name] if name in BUILTIN else Path(name)
    try:
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return (name,)


def read_vocabulary(path_or_name: str | os.PathLike) -> list[str]:
    """Entries of one vocabulary file: a JSON list of strings or one entry per line (.gz ok).

    ``"default"`` names the committed default vocabulary. Raises InputError (one line,
    naming the file and the problem) for a missing/unreadable file, invalid JSON, a JSON
    value that is not a list, a non-string or empty item, a blank line, or no entries.
    Later duplicates are dropped with a warning; ids follow first occurrence.

    Not cached: :func:`curate.vocab.languages.load_vocabulary` is the cached entry point
    (one file or a mapping of languages to files), and a matcher that keeps what it read
    (a worker's per-language lists) calls this directly.
    """
    return _load(_resolve(path_or_name))


def _load(path: Path) -> list[str]:
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
