"""Per-language matching (MetaCLIP 2): each caption against its own language's vocabulary.

MetaCLIP 2 (``count_per_shard`` in ``metaclip/curation/curate.py``) maps the caption's LID
language to a metadata language (``lid_langcode_to_metadata_langcode``: an empty code, or
one its table maps to "N/A", becomes ``other``, whose metadata is the union of the
Wikipedia languages no LID code covers) and matches the caption with that language's
automaton only. Here a caption whose ``lang`` is null, empty or not a key of the
vocabularies is matched against the ``other`` vocabulary when there is one (``fallback``),
and matches nothing otherwise (it has no metadata to be curated by; balance then drops it
as ``no_metadata_match``). Where MetaCLIP 2 would fail on an LID code missing from its
table, curate treats the code as unmapped: to reproduce a run, give every language that
has a list its own key.

Entry ids are global (vocabularies in sorted language order, ``offsets``; see
:mod:`curate.vocab.languages`). Matchers are built lazily, the first time a caption of that
language shows up, as MetaCLIP 2 loads its automatons: a worker that sees 30 of 300
languages builds 30.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.matching import Matcher, _as_string_array, _to_list_array

FALLBACK = "other"


class LanguageMatcher:
    """One :class:`Matcher` per language; ``match(texts, langs)`` gives global entry ids.

    ``vocabularies`` maps each language to its entries, or to a callable returning them
    (then ``sizes`` must give every list's length, so ids are known before any list is
    read): a worker then reads only the lists of the languages its captions are in, where
    MetaCLIP 2's hundreds of lists would otherwise be read, and held, by every worker.
    """

    def __init__(self, vocabularies: Mapping[str, Sequence[str] | Callable[[], Sequence[str]]],
                 boundary: str = "metaclip2", engine: str = "tokens",
                 fallback: str | None = FALLBACK, sizes: Mapping[str, int] | None = None):
        self.languages = tuple(sorted(vocabularies))
        self._entries = dict(vocabularies)
        if sizes is None:
            sizes = {lang: len(self._load(lang)) for lang in self.languages}
        self.sizes = {lang: int(sizes[lang]) for lang in self.languages}
        counts = [self.sizes[lang] for lang in self.languages]
        self.offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self.n_entries = int(self.offsets[-1])
        self.boundary, self.engine = boundary, engine
        self.fallback = self.languages.index(fallback) if fallback in self.languages else -1
        self._matchers: dict[int, Matcher] = {}
        Matcher([], boundary=boundary, engine=engine)  # check the options now

    def _load(self, lang: str) -> list[str]:
        v = self._entries[lang]
        if callable(v):
            v = self._entries[lang] = list(v())
        return v  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.n_entries

    def matcher(self, k: int) -> Matcher:
        """Language k's matcher (local ids), built on first use."""
        if k not in self._matchers:
            lang = self.languages[k]
            entries = self._load(lang)
            if len(entries) != self.sizes[lang]:
                raise ValueError(f"the {lang!r} vocabulary has {len(entries)} entries, "
                                 f"{self.sizes[lang]} expected (it changed during the run?)")
            self._matchers[k] = Matcher(entries, boundary=self.boundary, engine=self.engine)
            self._entries[lang] = []  # the matcher holds what it needs
        return self._matchers[k]

    def language_index(self, langs) -> np.ndarray:
        """Index into ``languages`` of each caption's vocabulary; -1 for none."""
        arr = _as_string_array(langs).cast(pa.string())
        idx = pc.index_in(arr, value_set=pa.array(self.languages, pa.string()))
        return idx.fill_null(self.fallback).to_numpy(zero_copy_only=False).astype(np.int64)

    def match(self, texts, langs, batch_size: int = 262_144) -> pa.ListArray:
        """Sorted, unique global entry ids per caption as ``list<int32>``."""
        arr = _as_string_array(texts)
        idx = self.language_index(langs)
        if idx.size != len(arr):
            raise ValueError(f"{idx.size} languages for {len(arr)} captions")
        rows_all, ids_all = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for k in np.unique(idx[idx >= 0]).tolist():
            rows = np.flatnonzero(idx == k)
            got = self.matcher(k).match(arr.take(pa.array(rows)), batch_size)
            parent = pc.list_parent_indices(got).to_numpy().astype(np.int64)
            local = pc.list_flatten(got).to_numpy(zero_copy_only=False).astype(np.int64)
            rows_all.append(rows[parent])
            ids_all.append(local + self.offsets[k])
        return _to_list_array(len(arr), np.concatenate(rows_all), np.concatenate(ids_all),
                              max(self.n_entries, 1))


def naive_language_match(texts: Sequence[str | None], langs: Sequence[str | None],
                         vocabularies: Mapping[str, Sequence[str]], boundary: str,
                         fallback: str | None = FALLBACK) -> list[list[int]]:
    """Reference: :func:`curate.algorithms.matching.naive_match` per caption in its language,
    plus the language's offset. Quadratic: for tests."""
    from curate.algorithms.matching import naive_match

    langs_sorted = sorted(vocabularies)
    offsets = dict(zip(langs_sorted, np.cumsum([0] + [len(vocabularies[x])
                                                      for x in langs_sorted]).tolist()))
    out = []
    for text, lang in zip(texts, langs, strict=True):
        if lang not in vocabularies:
            lang = fallback if fallback in vocabularies else None
        if lang is None:
            out.append([])
            continue
        local = naive_match([text], vocabularies[lang], boundary)[0]
        out.append([offsets[lang] + i for i in local])
    return out
