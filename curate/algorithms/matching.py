"""MetaCLIP substring matching of captions against a metadata vocabulary.

The default rule is MetaCLIP v1's, exactly: ``spacing(caption)`` pads the caption with one space at
each end, puts a space on both sides of each of ``, . ; : ? ! ` `` and maps tab, newline and
carriage return to a space (nothing else: no lower-casing, no collapsing of spaces); entry
``e`` matches when ``" " + e + " "`` is a substring of that. Case matters, every entry
matches at most once per caption, and overlapping entries all match (``hot``, ``hot dog``
and ``dog`` in "a hot dog").

Why a token engine and not one Aho-Corasick pass: MetaCLIP's method runs pyahocorasick over
each spaced caption and collects ids in a set. Most of its time is spent creating one Python
tuple per match (a 500k-entry vocabulary gives ~15 matches per caption), which batching the
captions into one string does not remove. A key bounded by spaces on both sides, however,
matches exactly when the entry's space-separated tokens occur as consecutive tokens of
``spacing(caption)[1:-1].split(" ")``: the spaces of the key coincide with token boundaries.
So the default engine ("tokens") splits and dictionary-encodes all captions in Arrow
(vectorised C++), then walks a token trie level by level with NumPy (a vectorised hash
table maps ``parent * n_tokens + token`` codes to child nodes). No Python code runs per
caption or per match.
Keys that are not space-bounded on a side (``boundary="metaclip2"`` or ``"no_space_scripts"``)
go through pyahocorasick over one joined string of all captions. ``engine="ahocorasick"``
sends every key that way; the tests check that both engines equal :func:`naive_match`.

Boundary rules (``boundary=``; the key functions live in
:mod:`curate.algorithms.matching_metaclip2`):

- ``metaclip1``: MetaCLIP v1, above: ``" " + entry + " "``.
- ``metaclip2``: MetaCLIP 2's ``substr_matching.py`` exactly: no space is required on a side
  of the entry whose character is "CJK or similar" (scripts written without spaces, or
  ASCII / CJK punctuation), and captions are ``str.strip()``-ed before ``spacing``.
- ``no_space_scripts``: curate's variant (formerly, wrongly, called ``metaclip2``): scripts
  without spaces including kana, punctuation keeps the v1 rule, no strip.

Speed (bench/bench_match.py, 2 x86_64 cores, 463k-entry default vocabulary, 100k real
captions, one core): ~330k captions/s against ~80-95k for MetaCLIP's per-caption loop,
about 4x, with identical output. A call looks up only its distinct tokens, in a dict built
once per process (~0.1 s, on the first call; ``pc.index_in`` re-hashed all 210k vocabulary
tokens per call, ~15-30 ms), so a 250-caption shard costs ~1 ms rather than ~20.

Pickling: a :class:`Matcher` holds only NumPy arrays, an Arrow array of tokens and (when some
keys are not space-bounded, or with ``engine="ahocorasick"``) a pyahocorasick automaton, all
of which pickle. Measured with the default vocabulary: building takes ~0.4-0.6 s; the
token engine's pickle is 22 MB and loads in ~3 ms, so ship the built matcher to workers.
With ``engine="ahocorasick"`` the automaton makes the pickle 68 MB (~0.15 s to load, ~0.7 s
to rebuild).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.codetable import CodeTable
from curate.algorithms.matching_metaclip2 import (
    metaclip2_key,
    no_space_scripts_key,
    strip_captions,
)

logger = logging.getLogger(__name__)

#: Characters that ``spacing`` surrounds with one space on each side (MetaCLIP v1).
PUNCT_TO_WRAP = ",.;:?!`"
#: Characters that ``spacing`` replaces with a space.
CHARS_TO_SPACE = "\t\n\r"

_SPACING_TABLE = {ord(c): f" {c} " for c in PUNCT_TO_WRAP}
_SPACING_TABLE.update({ord(c): " " for c in CHARS_TO_SPACE})

#: boundary rules; see the module docstring
BOUNDARIES = ("metaclip1", "metaclip2", "no_space_scripts")
ENGINES = ("tokens", "ahocorasick")

# Candidate characters for the separator between captions in the joined Aho-Corasick string;
# the first one that occurs in no key is used.
_SEPARATOR_CANDIDATES = "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\ufffe\uffff"


def spacing(text: str) -> str:
    """MetaCLIP v1's caption normalisation (see the module docstring)."""
    return (" " + text + " ").translate(_SPACING_TABLE)


def never_matches(entry: str) -> bool:
    """True when ``entry`` can match no caption under the v1 rule (a sufficient test).

    In ``spacing(c)`` every character of :data:`PUNCT_TO_WRAP` has a space on both sides
    and none of :data:`CHARS_TO_SPACE` is left, so a key holding one of the latter, or one
    of the former next to a non-space (``St. Bernard``), is a substring of no spaced caption.
    False does not promise a match is possible (``a . , b`` can never match either)."""
    key = " " + entry + " "
    if any(c in key for c in CHARS_TO_SPACE):
        return True
    return any(c in PUNCT_TO_WRAP and (key[i - 1] != " " or key[i + 1] != " ")
               for i, c in enumerate(key))


def entry_key(entry: str, boundary: str = "metaclip1") -> str:
    """The substring that must occur in the spaced caption for ``entry`` to match."""
    if boundary == "metaclip1":
        return " " + entry + " "
    if boundary == "metaclip2":
        return metaclip2_key(entry)
    if boundary == "no_space_scripts":
        return no_space_scripts_key(entry)
    raise ValueError(f"unknown boundary {boundary!r}; valid: {', '.join(BOUNDARIES)}")


def naive_match(
    texts: Iterable[str | None], entries: Sequence[str], boundary: str = "metaclip1"
) -> list[list[int]]:
    """Reference implementation: for each text the ids of entries whose key is a substring.

    Quadratic (entries x texts): for tests and benchmarks only.
    """
    keys = [entry_key(e, boundary) for e in entries]
    out = []
    for text in texts:
        if text is None:
            out.append([])
            continue
        spaced = spacing(text.strip() if boundary == "metaclip2" else text)
        out.append([i for i, k in enumerate(keys) if k in spaced])
    return out


def _as_string_array(texts) -> pa.Array:
    """Captions as one Arrow large_string array (nulls kept)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.large_string())
    if not isinstance(texts, pa.Array):
        texts = pa.array(texts, pa.large_string())
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)
            or pa.types.is_string_view(texts.type)):
        if pa.types.is_null(texts.type):
            return pa.nulls(len(texts), pa.large_string())
        raise TypeError(f"captions must be strings, got Arrow type {texts.type}")
    return texts.cast(pa.large_string())


def _spaced_inner(texts: pa.Array) -> pa.Array:
    """``spacing(t)[1:-1]`` for every caption, vectorised (the padding is added by callers)."""
    out = texts
    for ch in PUNCT_TO_WRAP:
        out = pc.replace_substring(out, ch, f" {ch} ")
    for ch in CHARS_TO_SPACE:
        out = pc.replace_substring(out, ch, " ")
    return out


def _to_list_array(n: int, caption_idx: np.ndarray, entry_idx: np.ndarray, n_entries: int):
    """Sorted, unique entry ids per caption as ``list<int32>`` (empty lists, never nulls)."""
    if caption_idx.size:
        # Sort + mask rather than np.unique: NumPy 2's hash-based unique is ~50x slower here.
        code = np.sort(caption_idx.astype(np.int64) * n_entries + entry_idx)
        code = code[np.concatenate(([True], code[1:] != code[:-1]))]
        caption_idx, entry_idx = np.divmod(code, n_entries)
    per_caption = np.bincount(caption_idx, minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_caption, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("more than 2**31 matches in one call: match fewer captions at a time")
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(entry_idx.astype(np.int32))
    )


class _TokenTrie:
    """Space-bounded keys as a trie over token ids, stored as sorted NumPy arrays.

    ``tokens`` is the token vocabulary (Arrow; :meth:`token_ids` encodes captions against it).
    ``first_node[token]`` is the trie node of a one-token prefix (-1: no entry starts with
    it). A longer prefix ``node`` extended by ``token`` is the node ``children`` maps the
    code ``node * n_tokens + token`` to. ``node_entry[node]`` is the
    entry id whose token sequence ends at that node, -1 if none.
    """

    def __init__(self, entries: pa.Array, entry_ids: np.ndarray):
        split = pc.split_pattern(entries, " ")
        flat = split.flatten()
        lengths = pc.list_value_length(split).to_numpy().astype(np.int64)
        encoded = flat.dictionary_encode()
        self.tokens = encoded.dictionary.cast(pa.large_string())
        tok = encoded.indices.to_numpy().astype(np.int64)
        n_tokens = len(self.tokens)
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])

        # Level 1: nodes 0..k-1 are the distinct first tokens.
        first_tok = tok[starts[:-1]]
        uniq_first, node = np.unique(first_tok, return_inverse=True)
        self.first_node = np.full(n_tokens, -1, dtype=np.int64)
        self.first_node[uniq_first] = np.arange(uniq_first.size)
        n_nodes = uniq_first.size
        node_of_entry_end = np.where(lengths == 1, node, -1)
        codes, children = [], []
        alive = np.flatnonzero(lengths > 1)
        node = node[alive]
        level = 1
        while alive.size:
            code = node * n_tokens + tok[starts[alive] + level]
            uniq, inverse = np.unique(code, return_inverse=True)
            codes.append(uniq)
            children.append(np.arange(n_nodes, n_nodes + uniq.size))
            node = n_nodes + inverse
            n_nodes += uniq.size
            level += 1
            ends_here = lengths[alive] == level
            node_of_entry_end[alive[ends_here]] = node[ends_here]
            alive, node = alive[~ends_here], node[~ends_here]
        codes_all = np.concatenate(codes) if codes else np.zeros(0, np.int64)
        child_all = (np.concatenate(children) if children else np.zeros(0, np.int64)).astype(
            np.int32 if n_nodes < 2**31 else np.int64)
        self.children = CodeTable(codes_all, child_all)
        self.node_entry = np.full(n_nodes, -1, dtype=np.int64)
        self.node_entry[node_of_entry_end] = entry_ids
        self.has_child = np.zeros(n_nodes, dtype=bool)
        self.has_child[codes_all // max(n_tokens, 1)] = True
        self.n_tokens = n_tokens
        self._lookup: dict[str, int] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lookup": None}  # rebuilt on first use: keeps pickles small

    def token_ids(self, flat: pa.Array) -> np.ndarray:
        """Vocabulary id of each token (int64, -1 if unknown). Only the call's distinct tokens
        are looked up, in a dict built once: ``pc.index_in`` would hash the whole vocabulary
        on every call, which was most of a small shard's matching time."""
        if self._lookup is None:
            self._lookup = dict(zip(self.tokens.to_pylist(), range(len(self.tokens))))
        encoded = flat.dictionary_encode()
        get = self._lookup.get
        distinct = encoded.dictionary.to_pylist()
        ids = np.fromiter((get(t, -1) for t in distinct), np.int64, len(distinct))
        return ids[encoded.indices.to_numpy()]

    def match(self, spaced_inner: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(caption index, entry id) of every match, unsorted, possibly repeated."""
        split = pc.split_pattern(spaced_inner, " ")
        flat = split.flatten()
        if len(flat) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        parent = pc.list_parent_indices(split).to_numpy().astype(np.int64)
        tok = self.token_ids(flat)
        n = tok.size
        pos = np.flatnonzero(tok >= 0)
        node = self.first_node[tok[pos]]
        keep = node >= 0
        pos, node = pos[keep], node[keep]
        found_caption, found_entry = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        length = 1
        while pos.size:
            entry = self.node_entry[node]
            hit = entry >= 0
            found_caption.append(parent[pos[hit]])
            found_entry.append(entry[hit])
            # Extend the prefixes that have children by the next token of the same caption.
            nxt = pos + length
            ok = self.has_child[node] & (nxt < n)
            pos, node, nxt = pos[ok], node[ok], nxt[ok]
            ok = (parent[nxt] == parent[pos]) & (tok[nxt] >= 0)
            pos, node, nxt = pos[ok], node[ok], nxt[ok]
            child = self.children.get(node * self.n_tokens + tok[nxt])
            ok = child >= 0
            pos, node = pos[ok], child[ok]
            length += 1
        return np.concatenate(found_caption), np.concatenate(found_entry)


class _JoinedAhoCorasick:
    """Arbitrary keys matched by one pyahocorasick pass over all captions joined.

    Captions are joined as ``" " + c0 + " " + SEP + " " + c1 + " " + SEP ...`` where SEP is a
    character that occurs in no key, so no key can match across two captions. The separator
    positions are computed from the caption lengths (not searched for), so captions that
    themselves contain SEP are handled too. A match's end offset gives its caption by
    ``np.searchsorted`` on those positions.
    """

    def __init__(self, keys: list[str], entry_ids: np.ndarray):
        import ahocorasick

        used = set()
        for k in keys:
            used.update(k)
        self.sep = next((c for c in _SEPARATOR_CANDIDATES if c not in used), None)
        if self.sep is None:  # pragma: no cover - needs keys using all candidates
            raise ValueError("no separator character is free: entries use all of them")
        self.automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for key, eid in zip(keys, entry_ids.tolist(), strict=True):
            self.automaton.add_word(key, eid)
        self.automaton.make_automaton()

    def match(self, spaced_inner: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        n = len(spaced_inner)
        filled = spaced_inner.fill_null("")
        glue = " " + self.sep + " "
        wrapped = pa.LargeListArray.from_arrays(pa.array([0, n], pa.int64()), filled)
        joined = " " + pc.binary_join(wrapped, pa.scalar(glue, pa.large_string()))[0].as_py() + " "
        lengths = pc.utf8_length(filled).to_numpy().astype(np.int64)
        # Caption k spans [sep_{k-1} + 1, sep_k) where sep_k = sum_{j<=k}(len_j + 3) - 1.
        sep_pos = np.cumsum(lengths + 3) - 1
        pairs = np.fromiter(
            itertools.chain.from_iterable(self.automaton.iter(joined)), dtype=np.int64
        )
        ends, entry = pairs[0::2], pairs[1::2]
        caption = np.searchsorted(sep_pos, ends, side="left")
        if spaced_inner.null_count:
            valid = spaced_inner.is_valid().to_numpy(zero_copy_only=False)
            keep = valid[caption]
            caption, entry = caption[keep], entry[keep]
        return caption, entry


class Matcher:
    """Matches captions against a fixed list of entries (the index is the entry id).

    Build once per vocabulary (about a second for 500k entries) and reuse; it pickles (see
    the module docstring for measured sizes). ``match`` returns, per caption, the sorted
    unique ids of the entries that match it under the chosen ``boundary`` rule; null and
    empty captions give empty lists.

    Entries must be unique, non-empty and not made of spaces only (use
    :func:`curate.vocab.load_vocabulary`, which enforces that). Entries that can never match
    under v1 (e.g. containing ``.`` or a tab) are accepted and simply never match, as in
    MetaCLIP.
    """

    def __init__(
        self,
        entries: Sequence[str] | pa.Array,
        boundary: str = "metaclip1",
        engine: str = "tokens",
    ):
        if boundary not in BOUNDARIES:
            raise ValueError(f"unknown boundary {boundary!r}; valid: {', '.join(BOUNDARIES)}")
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
        entries = list(entries.to_pylist() if isinstance(entries, pa.Array) else entries)
        self._validate(entries)
        self.boundary, self.engine, self.n_entries = boundary, engine, len(entries)
        keys = [entry_key(e, boundary) for e in entries]
        if engine == "tokens":
            bounded = np.array([k[0] == " " and k[-1] == " " for k in keys], dtype=bool)
        else:
            bounded = np.zeros(len(keys), dtype=bool)
        ids_tok = np.flatnonzero(bounded)
        ids_ac = np.flatnonzero(~bounded)
        self._trie = None
        if ids_tok.size:
            self._trie = _TokenTrie(pa.array([entries[i] for i in ids_tok], pa.large_string()),
                                    ids_tok)
        self._ac = None
        if ids_ac.size:
            self._ac = _JoinedAhoCorasick([keys[i] for i in ids_ac], ids_ac)
        logger.debug("matcher: %d entries, %d in the token trie, %d in Aho-Corasick",
                     len(entries), ids_tok.size, ids_ac.size)

    @staticmethod
    def _validate(entries: list) -> None:
        seen: dict[str, int] = {}
        for i, e in enumerate(entries):
            if not isinstance(e, str):
                raise ValueError(f"entry {i} is not a string: {e!r}")
            if not e.strip(" "):
                raise ValueError(f"entry {i} is empty or only spaces: {e!r}")
            if e in seen:
                raise ValueError(f"entry {i} {e!r} duplicates entry {seen[e]}")
            seen[e] = i

    def __len__(self) -> int:
        return self.n_entries

    def match(self, texts, batch_size: int = 262_144) -> pa.ListArray:
        """Entry ids per caption as ``list<int32>``; accepts a list of str/None or Arrow."""
        arr = _as_string_array(texts)
        if len(arr) > batch_size:
            parts = [self.match(arr.slice(i, batch_size), batch_size)
                     for i in range(0, len(arr), batch_size)]
            return pa.concat_arrays(parts)
        inner = _spaced_inner(strip_captions(arr) if self.boundary == "metaclip2" else arr)
        found = [engine.match(inner) for engine in (self._trie, self._ac) if engine is not None]
        caption = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
        entry = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
        return _to_list_array(len(arr), caption, entry, max(self.n_entries, 1))
