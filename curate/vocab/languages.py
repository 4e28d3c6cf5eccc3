"""Per-language metadata (MetaCLIP 2): one vocabulary per language, one global id space.

``match.metadata`` is either one vocabulary (a file or a built-in name) or a mapping
``{language: vocabulary}``. With a mapping, each caption is matched against its own
language's list, and entry ids are global: the vocabularies are concatenated in **sorted
language order** and entry ``i`` of language k has id ``offsets[k] + i``. Sorted, not YAML
order, because the stage fingerprint does not see key order (two files listing the same
languages in another order must give the same ids). Every downstream consumer (balance's
counts, the report's concept table, emit's ``entry_ids``) then keeps working on one list.

A single vocabulary is the same structure with one unnamed language (``languages == ()``),
so this module is also where every vocabulary a run uses is loaded and cached (one cache);
:mod:`curate.vocab.vocabulary` only reads files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from curate.errors import InputError
from curate.vocab.vocabulary import read_vocabulary, stamp

#: The metadata key MetaCLIP 2 matches captions of languages without their own list against
#: (its ``lid_langcode_to_metadata_langcode`` maps an empty or unmapped LID code there).
OTHER = "other"


@dataclass(frozen=True)
class Metadata:
    """Loaded metadata: one vocabulary, or one per language (sorted by language)."""

    #: language keys in id order; () for a single vocabulary
    languages: tuple[str, ...]
    #: the entry lists, in the order of ``languages`` (one list when single)
    vocabularies: tuple[tuple[str, ...], ...]

    @property
    def per_language(self) -> bool:
        return bool(self.languages)

    @cached_property
    def offsets(self) -> np.ndarray:
        """int64, length len(vocabularies) + 1: the first global id of each vocabulary."""
        sizes = [len(v) for v in self.vocabularies]
        return np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)

    @cached_property
    def entries(self) -> list[str]:
        """Every entry by global id (built once: MetaCLIP 2's lists hold millions)."""
        return [e for v in self.vocabularies for e in v]

    def entry_langs(self) -> list[str | None]:
        """The language of every entry by global id (None for a single vocabulary)."""
        if not self.languages:
            return [None] * sum(len(v) for v in self.vocabularies)
        return [lang for lang, v in zip(self.languages, self.vocabularies, strict=True)
                for _ in v]

    def by_language(self) -> dict[str, list[str]]:
        return {lang: list(v) for lang, v in zip(self.languages, self.vocabularies, strict=True)}


def check_languages(spec: Mapping[str, object]) -> None:
    """Language keys are non-empty strings without surrounding spaces; at least one."""
    if not spec:
        raise InputError("match.metadata: an empty mapping of languages to vocabularies")
    for lang in spec:
        if not isinstance(lang, str) or not lang or lang != lang.strip():
            raise InputError(f"match.metadata: bad language key {lang!r} (the `lang` values "
                             "captions carry, e.g. en, de, ja)")


#: the one vocabulary cache: the last metadata loaded, by what identifies its files' content
#: (match, balance and the report ask for it several times per process; MetaCLIP 2's lists
#: hold millions of entries, so one is kept, not several)
_CACHE: dict[tuple, Metadata] = {}


def load_metadata(spec: str | os.PathLike | Mapping[str, str]) -> Metadata:
    """One vocabulary, or one per language; entries per list as :func:`read_vocabulary`.

    Raises InputError naming the language and file when one list cannot be loaded.
    Cached by (spec, file sizes and mtimes).
    """
    if not isinstance(spec, Mapping):
        key: tuple = ((None, stamp(spec)),)
        if key not in _CACHE:
            _remember(key, Metadata((), (tuple(read_vocabulary(spec)),)))
        return _CACHE[key]
    check_languages(spec)
    langs = tuple(sorted(spec))
    key = tuple((lang, stamp(spec[lang])) for lang in langs)
    if key in _CACHE:
        return _CACHE[key]
    vocabs = []
    for lang in langs:
        try:
            vocabs.append(tuple(read_vocabulary(spec[lang])))
        except InputError as err:
            raise InputError(f"match.metadata.{lang}: {err}") from None
    return _remember(key, Metadata(langs, tuple(vocabs)))


def _remember(key: tuple, out: Metadata) -> Metadata:
    _CACHE.clear()
    _CACHE[key] = out
    return out


def load_vocabulary(spec: str | os.PathLike | Mapping[str, str]) -> list[str]:
    """Every entry by global id: one vocabulary (a file or a built-in name), or a mapping
    ``{language: file}`` concatenated in sorted language order, so callers that only need
    "entry by id" (the report) work unchanged. Cached with :func:`load_metadata`."""
    return list(load_metadata(spec).entries)
