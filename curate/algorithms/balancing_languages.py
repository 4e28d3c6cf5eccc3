"""MetaCLIP 2's per-language thresholds, exactly as its released code computes them.

MetaCLIP 2 (``metaclip/curation/curate.py`` in facebookresearch/MetaCLIP, ``global_count``)
counts matches per language (each language's entry ids index its own metadata list), takes
English's threshold ``t_en`` as given (170,000 there; OpenAI CLIP's equivalent is 20,000),
turns it into the tail share ``p = t_to_p(counts_en, t_en)`` and gives every other language
``t = p_to_t(counts_lang, p)``:

- ``t_to_p(c, t) = c[c < t].sum() / c.sum()``: the share of the language's matches that fall
  in entries with fewer than t matches (strictly fewer).
- ``p_to_t(c, p)``: sort the counts ascending (entries with 0 matches included), take the
  cumulative share ``cumsum / sum`` at every position, and return the count at the position
  whose share is closest to p (``argmin |share - p|``: the first such position on ties). So
  t is always one of the language's own counts, possibly 0.
- ``count_to_prob``: an entry's probability is ``t / max(count, t)``: 1 for counts up to t,
  ``t / count`` above. curate's ``min(1, t / count)`` is the same number. A language whose
  t is 0 (its matches sit in a few entries and p is small) keeps none of its pairs, in
  MetaCLIP 2 as here.

Why not a "nearest tail share" search over every integer t (the earlier ``per_language_t``):
that gives a t one above a present count, or one that is no count at all, so per-language
thresholds, and the kept set, were off against MetaCLIP 2 by one.

Languages with no match at all have no t (MetaCLIP 2 never creates their counts). English
must have matches: MetaCLIP 2 would fail on the missing key, here it is a ValueError.

Global entry ids: curate matches each language against its own vocabulary but numbers all
entries in one space, the vocabularies concatenated in sorted language order
(``offsets[k]`` is the first id of language k), so one count vector and one per-entry t
vector (:func:`entry_t`) serve every language, and the balancing draws
(:mod:`curate.algorithms.balancing`) need no language column.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ENGLISH = "en"


def t_to_p(entry_counts: np.ndarray, t: float) -> float:
    """MetaCLIP 2's ``t_to_p``: share of matches in entries with count < t."""
    c = np.asarray(entry_counts)
    total = c.sum()
    if total == 0:
        raise ValueError("t_to_p: the counts sum to 0 (no matches)")
    return float(c[c < t].sum() / total)


def p_to_t(entry_counts: np.ndarray, p: float) -> int:
    """MetaCLIP 2's ``p_to_t``: the count whose ascending cumulative share is closest to p."""
    counts = np.sort(np.asarray(entry_counts))
    total = counts.sum()
    if total == 0:
        raise ValueError("p_to_t: the counts sum to 0 (no matches)")
    portion = np.cumsum(counts) / total
    return int(counts[int(np.abs(portion - p).argmin())])


def language_thresholds(counts_by_lang: Mapping[str, np.ndarray], t_en: int,
                        english: str = ENGLISH) -> dict[str, tuple[int | None, float | None]]:
    """``{lang: (t, tail_fraction)}`` by MetaCLIP 2's rule (module docstring).

    ``tail_fraction`` is ``t_to_p(counts_lang, t)``: the share of that language's matches in
    entries below its t (English: p itself), so one sees how close each language came to p.
    Languages without matches get ``(None, None)``.
    """
    if english not in counts_by_lang:
        raise ValueError(f"no counts for {english!r}; languages: {sorted(counts_by_lang)}")
    en = np.asarray(counts_by_lang[english])
    if en.sum() == 0:
        raise ValueError(f"{english!r} has no matches: its tail share sets every other "
                         "language's t")
    p = t_to_p(en, t_en)
    out: dict[str, tuple[int | None, float | None]] = {}
    for lang in sorted(counts_by_lang):
        c = np.asarray(counts_by_lang[lang])
        if lang == english:  # c < t_en holds for the same counts as c < ceil(t_en)
            out[lang] = (int(np.ceil(t_en)), p)
        elif c.sum() == 0:
            out[lang] = (None, None)
        else:
            t = p_to_t(c, p)
            out[lang] = (t, t_to_p(c, t))
    return out


def split_counts(counts: np.ndarray, languages: Sequence[str], offsets: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """The global count vector cut into one vector per language (views, no copies)."""
    counts = np.asarray(counts)
    return {lang: counts[offsets[k]:offsets[k + 1]] for k, lang in enumerate(languages)}


def entry_t(t_by_lang: Mapping[str, int | None], languages: Sequence[str],
            offsets: np.ndarray) -> np.ndarray:
    """Per-entry t (float64, global ids): each entry gets its language's t.

    A language without a t (no matches) gets 0: none of its entries is matched by a pair
    that reaches balance, so the value is never used."""
    out = np.zeros(int(offsets[-1]), np.float64)
    for k, lang in enumerate(languages):
        t = t_by_lang.get(lang)
        out[offsets[k]:offsets[k + 1]] = 0.0 if t is None else float(t)
    return out


def thresholds_for(counts: np.ndarray, languages: Sequence[str], offsets: np.ndarray,
                   t_en: float, english: str = ENGLISH) -> np.ndarray:
    """:func:`entry_t` of :func:`language_thresholds` for one t_en (plans try many)."""
    by_lang = language_thresholds(split_counts(counts, languages, offsets), t_en, english)
    return entry_t({lang: v[0] for lang, v in by_lang.items()}, languages, offsets)


def pair_language(entry_ids: pa.Array, offsets: np.ndarray) -> np.ndarray:
    """Language index of each pair (from its entry ids; -1 when it matched nothing).

    A pair is matched against one language's vocabulary, so all its ids share a range."""
    if isinstance(entry_ids, pa.ChunkedArray):
        entry_ids = entry_ids.combine_chunks()
    parent = pc.list_parent_indices(entry_ids).to_numpy().astype(np.int64)
    ids = pc.list_flatten(entry_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    lang = np.full(len(entry_ids), -1, np.int64)
    lang[parent] = np.searchsorted(np.asarray(offsets), ids, side="right") - 1
    return lang


def expected_by_language(shards: Iterable[pa.Array], counts: np.ndarray, t: np.ndarray,
                         offsets: np.ndarray) -> np.ndarray:
    """Expected kept pairs per language (sum of P(keep)) for the per-entry t ``t``."""
    from curate.algorithms.balancing import keep_prob

    out = np.zeros(len(offsets) - 1, np.float64)
    for ids in shards:
        prob = keep_prob(ids, counts, t).astype(np.float64)
        lang = pair_language(ids, offsets)
        ok = lang >= 0
        out += np.bincount(lang[ok], weights=prob[ok], minlength=out.size)
    return out


def t_en_for_target(shards, counts: np.ndarray, languages: Sequence[str],
                    offsets: np.ndarray, target: float, english: str = ENGLISH,
                    rel_tol: float = 1e-4, grid: int = 16) -> int:
    """The t_en whose expected kept size (all languages, each at its derived t) is
    ``target``. Expected size is monotone in t_en (p grows with it, and each t with p), a
    step function of it, so the answer is the smallest integer t_en (what ``balance.t``
    takes) whose expected size reaches ``target``, up to the search's ``rel_tol``."""
    from curate.algorithms.balancing import expected_size, grid_search

    counts = np.asarray(counts)

    def sizes(ts: np.ndarray) -> np.ndarray:
        vecs = np.stack([thresholds_for(counts, languages, offsets, t, english) for t in ts])
        total = np.zeros(ts.size)
        for shard in shards:
            total += expected_size(shard, counts, vecs)
        return total

    target = float(target)
    hi = float(max(counts.max(initial=0), 1)) + 1.0  # every count below t_en: p = 1
    ceiling = sizes(np.array([hi]))[0]
    if not 0 < target <= ceiling:
        raise ValueError(f"target must be in (0, {ceiling:.0f}] (expected kept size with "
                         f"every t at its largest), got {target}")
    return int(np.ceil(grid_search(sizes, hi, target, grid, rel_tol)))
