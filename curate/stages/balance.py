"""balance: MetaCLIP balancing. A global count per entry, then a seeded draw per pair.

The ``count`` step (a global step) sums per-shard entry counts of the surviving, matched
pairs into ``balance/entry_counts.parquet`` (entry_id, entry, count). Counts are sums over
shards, so a grown pool only needs its new shards matched; the sum itself is re-read each
run (one ``bincount`` per shard). Each shard then gets ``balance/part-NNNNN.parquet``: uid,
keep_prob (1 - prod(1 - min(1, t/count))), kept, reason (``no_metadata_match`` or
``not_sampled``), detail. Draws are deterministic per (seed, uid, entry)
(curate.algorithms.balancing), so the kept set does not depend on sharding or workers.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.config import Section
from curate.core.io import read_table, write_parquet_atomic
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions

_COUNTS: dict[str, np.ndarray] = {}


class BalanceConfig(Section):
    t: int = Field(20_000, gt=0)
    seed: int = Field(0, ge=0)


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
    views = {"entry_counts.parquet": "entry_counts"}
    pool_columns = ["uid"]
    help = "MetaCLIP balancing: entry counts over the pool, then a seeded draw per pair."

    def steps(self) -> list:
        return [GlobalStep("count", plan=lambda: list(self.shards), map=self._count_shard,
                           start=self._zeros, fold=_add_counts, commit=self._write_counts),
                ShardStep()]

    def _match(self):
        return self.previous("match")

    def _metadata(self) -> str:
        return self.pipeline.section(self._match().name).metadata

    def counts_path(self) -> str:
        return self.rd.path(self.pipeline.ref(self.name).folder, "entry_counts.parquet")

    def _entries(self) -> list[str]:
        from curate.vocab import load_vocabulary

        return load_vocabulary(self._metadata())

    def _zeros(self) -> np.ndarray:
        return np.zeros(len(self._entries()), np.int64)

    def _count_shard(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        """Sparse per-entry counts of one shard: (ids, counts), small to ship to the driver."""
        from curate.algorithms.balancing import count_entries

        m = matched(self.rd, self.deciding_before(), self._match().folder, shard)
        c = count_entries(m["entry_ids"].combine_chunks(), self._n_entries())
        nz = np.flatnonzero(c)
        return nz.astype(np.int32), c[nz].astype(np.int32)  # small: see _report_counts

    def _n_entries(self) -> int:
        if not hasattr(self, "_n"):
            self._n = len(self._entries())
        return self._n

    def _write_counts(self, total: np.ndarray) -> dict:
        entries = self._entries()
        table = pa.table({"entry_id": pa.array(np.arange(len(entries)), pa.int32()),
                          "entry": pa.array(entries, pa.string()),
                          "count": pa.array(total, pa.int64())})
        write_parquet_atomic(self.rd.fs, self.counts_path(), table)
        digest = hashlib.sha256(total.tobytes()).hexdigest()[:16]
        head = int((total > self.section.t).sum())
        return {"counts_digest": digest, "entries_matched": int((total > 0).sum()),
                "head_entries": head}

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
        prob, kept = balance(m["uid"].combine_chunks(), ids, counts, t, seed)
        no_match = pc.equal(pc.list_value_length(ids), 0)
        reason = pc.if_else(no_match, "no_metadata_match", "not_sampled")
        return pa.table({"uid": m["uid"], "keep_prob": pa.array(prob, pa.float32()),
                         **decisions(pa.array(kept, pa.bool_()), reason)})


def _add_counts(total: np.ndarray, item: str, sparse: tuple[np.ndarray, np.ndarray]
                ) -> np.ndarray:
    ids, c = sparse
    total[ids] += c  # ids are unique within a shard's result
    return total
