"""balance: MetaCLIP balancing. A global count per entry, then a seeded draw per pair.

The ``count`` step (a global step) sums per-shard entry counts of the surviving, matched
pairs into ``balance/entry_counts.parquet`` (entry_id, lang, entry, count). Counts are sums over
shards, so a grown pool only needs its new shards matched; the sum itself is re-read each
run (one ``bincount`` per shard). Each shard then gets ``balance/part-NNNNN.parquet``: uid,
keep_prob (1 - prod(1 - min(1, t/count))), kept, reason (``no_metadata_match`` or
``not_sampled``), detail. Draws are deterministic per (seed, uid, entry)
(curate.algorithms.balancing), so the kept set does not depend on sharding or workers.

``per_language: true`` (MetaCLIP 2; match's metadata must map languages to vocabularies,
with ``en`` among them): the counts are cut per language, ``t`` is English's threshold, and
every other language gets its own t by MetaCLIP 2's rule
(curate.algorithms.balancing_languages), written to ``balance/language_t.parquet`` (lang,
t, tail_fraction; without per_language one row: lang null, t, and the share of matches in
entries below t).
A pair's entries all belong to its caption's language, so giving each entry its language's
t makes each pair's keep_prob use its language's t. entry_counts.parquet gains ``lang``
(null with a single vocabulary).

With per-language metadata the ``count`` step also records which languages had no list of
their own among the pairs it counts (match used the ``other`` list for them, or none):
run.json ``stages.balance.steps.count.info.to_other`` = {pairs, other_list, languages:
{lang: pairs}} (null and empty ``lang``: "(none)"); the report's Language mix shows it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_serializer

from curate.config import Section
from curate.core.io import read_table, write_parquet_atomic
from curate.errors import InputError
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions

_COUNTS: dict[str, np.ndarray] = {}
_T_ENTRY: dict[str, np.ndarray] = {}


class BalanceConfig(Section):
    #: the cap per entry; with per_language, English's (MetaCLIP 2's t_en)
    t: int = Field(20_000, gt=0)
    seed: int = Field(0, ge=0)
    #: MetaCLIP 2: one t per language, from English's tail share at t
    per_language: bool = False

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Leave ``per_language`` out while false, so sections written before it existed
        keep their fingerprint (a rerun does not redo balance and every later stage)."""
        data = handler(self)
        if not self.per_language and isinstance(data, dict):
            data.pop("per_language", None)
        return data


def matched(rd, deciding: list[str], match_folder: str, shard: str) -> pa.Table:
    """uid, entry_ids of the pairs that reach balance in ``shard``."""
    survivors = rd.survivors(deciding, shard, ["uid"])
    m = rd.read(match_folder, shard, ["uid", "entry_ids"])
    if m.num_rows != survivors.num_rows:
        m = m.filter(pc.is_in(m["uid"], value_set=survivors["uid"].combine_chunks()))
    return m


class BalanceStage(Stage):
    kind = "balance"
    folder = "balance"
    decides = True
    requires = ("match",)
    Config = BalanceConfig
    schema = pa.schema([("uid", pa.string()), ("keep_prob", pa.float32()), *DECISION_FIELDS])
    reasons = {"no_metadata_match": "the caption matches no metadata entry",
               "not_sampled": "not drawn by MetaCLIP balancing (its entries are head entries)"}
    views = {"entry_counts.parquet": "entry_counts", "language_t.parquet": "language_t"}
    pool_columns = ["uid"]
    help = "MetaCLIP balancing: entry counts over the pool, then a seeded draw per pair."

    def steps(self) -> list:
        return [GlobalStep("count", plan=lambda: list(self.shards), map=self._count_shard,
                           start=self._start, fold=_add_counts, commit=self._write_counts),
                ShardStep()]

    def _match(self):
        return self.previous("match")

    def _metadata(self) -> str:
        return self.pipeline.section(self._match().name).metadata

    def counts_path(self) -> str:
        return self.rd.path(self.pipeline.ref(self.name).folder, "entry_counts.parquet")

    def _meta(self):
        from curate.vocab import load_metadata

        return load_metadata(self._metadata())

    def _entries(self) -> list[str]:
        return self._meta().entries

    def _start(self) -> dict:
        return {"total": self._zeros(), "to_other": {}}

    def preflight(self) -> list[str]:
        """per_language needs per-language metadata with English (its files: match's lines)."""
        meta = self.pipeline.section(self._match().name).metadata
        if not self.section.per_language or (isinstance(meta, dict) and "en" in meta):
            return []
        return [f"{self.name}.per_language needs match.metadata to map languages to "
                "vocabularies, `en` among them (English's tail share at t sets every other "
                "language's t)"]

    def _zeros(self) -> np.ndarray:
        if self.section.per_language:
            meta = self._meta()
            if not meta.per_language or "en" not in meta.languages:
                raise InputError(f"{self.name}.per_language needs match.metadata to map "
                                 "languages to vocabularies, `en` among them "
                                 "(English's tail share at t sets every other language's t)")
        return np.zeros(len(self._entries()), np.int64)

    def _count_shard(self, shard: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Sparse per-entry counts of one shard: (ids, counts, pairs per language that fell
        to ``other``), small to ship to the driver.

        With per-language metadata the worker does not load the (possibly hundreds of)
        lists to learn their total size: it counts up to the largest id it sees, and the
        driver's fold checks the ids against the vocabulary."""
        from curate.algorithms.balancing import count_entries

        m = matched(self.rd, self.deciding_before(), self._match().folder, shard)
        ids = m["entry_ids"].combine_chunks()
        if self.section.per_language:
            flat = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int64)
            c = np.bincount(flat) if flat.size else np.zeros(0, np.int64)
        else:
            c = count_entries(ids, self._n_entries())
        nz = np.flatnonzero(c)
        return nz.astype(np.int32), c[nz].astype(np.int32), self._to_other(shard, m["uid"])

    def _to_other(self, shard: str, uids: pa.ChunkedArray) -> dict[str, int]:
        """Pairs per ``lang`` that has no list of its own (null and empty: "(none)"): match
        used the ``other`` list for them, or none. {} with a single vocabulary."""
        from curate.stages.match import caption_langs

        listed = self._metadata()
        if not isinstance(listed, dict):
            return {}
        m = self._match()
        names = [r.name for r in self.before]
        language = next((r.folder for r in reversed(self.before[:names.index(m.name)])
                         if r.kind == "language"), None)
        langs = caption_langs(self.rd, language, shard, uids.combine_chunks())
        has_list = pc.is_in(langs, value_set=pa.array(sorted(listed), pa.string()))
        off = pc.fill_null(pc.filter(langs, pc.invert(pc.fill_null(has_list, False))), "")
        vc = pc.value_counts(off).to_pylist()
        return {r["values"] or "(none)": int(r["counts"]) for r in vc}

    def _n_entries(self) -> int:
        if not hasattr(self, "_n"):
            self._n = len(self._entries())
        return self._n

    def _write_counts(self, acc: dict) -> dict:
        total, meta = acc["total"], self._meta()
        table = pa.table({"entry_id": pa.array(np.arange(len(total)), pa.int32()),
                          "lang": pa.array(meta.entry_langs(), pa.string()),
                          "entry": pa.array(meta.entries, pa.string()),
                          "count": pa.array(total, pa.int64())})
        write_parquet_atomic(self.rd.fs, self.counts_path(), table)
        digest = hashlib.sha256(total.tobytes()).hexdigest()[:16]
        info = {"counts_digest": digest, "entries_matched": int((total > 0).sum())}
        if meta.per_language:  # which languages had no list (report: Language mix)
            from curate.vocab import OTHER

            info["to_other"] = {"pairs": sum(acc["to_other"].values()),
                                "other_list": OTHER in meta.languages,
                                "languages": dict(sorted(acc["to_other"].items(),
                                                         key=lambda kv: (-kv[1], kv[0])))}
        if self.section.per_language:
            from curate.algorithms.balancing_languages import language_thresholds, split_counts

            try:
                by_lang = language_thresholds(
                    split_counts(total, meta.languages, meta.offsets), self.section.t)
            except ValueError as err:
                raise InputError(f"{self.name}.per_language: {err}") from None
        else:  # one t for every entry: one row, lang null
            from curate.algorithms.balancing import tail_share

            t = self.section.t
            by_lang = {None: (t, tail_share(total, t) if total.sum() else None)}
        keys = sorted(by_lang, key=lambda x: (x is not None, x))
        write_parquet_atomic(self.rd.fs, self.language_t_path(), pa.table({
            "lang": pa.array(keys, pa.string()),
            "t": pa.array([by_lang[x][0] for x in keys], pa.int64()),
            "tail_fraction": pa.array([by_lang[x][1] for x in keys], pa.float64())}))
        if not self.section.per_language:
            return {**info, "head_entries": int((total > self.section.t).sum())}
        sizes = {x: len(v) for x, v in zip(meta.languages, meta.vocabularies, strict=True)}
        t_by_lang = {x: v[0] for x, v in by_lang.items()}
        return {**info, "head_entries": int((total > self._t_entry(t_by_lang, sizes)).sum()),
                "language_t": t_by_lang, "language_sizes": sizes}

    def language_t_path(self) -> str:
        return self.rd.path(self.pipeline.ref(self.name).folder, "language_t.parquet")

    def _t_entry(self, t_by_lang: dict, sizes: dict[str, int]) -> np.ndarray:
        """Each entry's language's t (global ids: lists in sorted language order)."""
        from curate.algorithms.balancing_languages import entry_t

        langs = sorted(sizes)
        offsets = np.concatenate(([0], np.cumsum([sizes[x] for x in langs]))).astype(np.int64)
        return entry_t(t_by_lang, langs, offsets)

    def _counts(self) -> np.ndarray:
        key = self.state["count"]["counts_digest"]
        if key not in _COUNTS:
            _COUNTS.clear()
            t = read_table(self.rd.fs, self.counts_path(), ["count"])
            _COUNTS[key] = t["count"].to_numpy()
        return _COUNTS[key]

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.algorithms.balancing import balance

        m = matched(self.rd, self.deciding_before(), self._match().folder, shard)
        ids = m["entry_ids"].combine_chunks()
        counts = self._counts()
        t, seed = self.section.t, self.section.seed
        if self.section.per_language:
            key = json.dumps([self.state["count"]["language_t"],
                              self.state["count"]["language_sizes"]], sort_keys=True)
            if key not in _T_ENTRY:  # one vector per process, not one per shard
                _T_ENTRY.clear()
                _T_ENTRY[key] = self._t_entry(self.state["count"]["language_t"],
                                              self.state["count"]["language_sizes"])
            t = _T_ENTRY[key]
        prob, kept = balance(m["uid"].combine_chunks(), ids, counts, t, seed)
        no_match = pc.equal(pc.list_value_length(ids), 0)
        reason = pc.if_else(no_match, "no_metadata_match", "not_sampled")
        return pa.table({"uid": m["uid"], "keep_prob": pa.array(prob, pa.float32()),
                         **decisions(pa.array(kept, pa.bool_()), reason)})


def _add_counts(acc: dict, item: str,
                result: tuple[np.ndarray, np.ndarray, dict[str, int]]) -> dict:
    ids, c, to_other = result
    total = acc["total"]
    if ids.size and ids[-1] >= total.size:  # ids ascend: np.flatnonzero
        raise InputError(f"{item}: entry id {int(ids[-1])} is beyond the vocabulary's "
                         f"{total.size} entries (did match.metadata change?)")
    total[ids] += c  # ids are unique within a shard's result
    for lang, n in to_other.items():
        acc["to_other"][lang] = acc["to_other"].get(lang, 0) + n
    return acc
