"""balance: MetaCLIP balancing. A global count per entry, then a seeded draw per pair.

``prepare`` (driver) sums per-shard entry counts of the surviving, matched pairs into
``balance/entry_counts.parquet`` (entry_id, entry, count). Counts are sums over shards, so
a grown pool only needs its new shards matched; the sum itself is re-read each run (one
``bincount`` per shard). Each shard then gets ``balance/part-NNNNN.parquet``: uid, keep_prob
(1 - prod(1 - min(1, t/count))), kept, reason. Draws are deterministic per (seed, uid,
entry) (curate.algorithms.balancing), so the kept set does not depend on sharding or workers.
"""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import engine, faults
from curate.core.io import read_table, write_parquet_atomic
from curate.stages.base import Stage

_COUNTS: dict[str, np.ndarray] = {}


def matched(rd, before: list[str], shard: str) -> pa.Table:
    """uid, entry_ids of the pairs that reach balance in ``shard``."""
    survivors = rd.survivors(before, shard, ["uid"])
    m = rd.read("match", shard, ["uid", "entry_ids"])
    if m.num_rows != survivors.num_rows:
        m = m.filter(pc.is_in(m["uid"], value_set=survivors["uid"].combine_chunks()))
    return m


def shard_counts(run_url: str, before: list[str], n_entries: int, shard: str):
    """Sparse per-entry counts of one shard: (ids, counts), small to ship to the driver."""
    from curate.algorithms.balancing import count_entries
    from curate.core.rundir import RunDir

    faults.maybe_fail("balance-count", shard)
    m = matched(RunDir(run_url), before, shard)
    c = count_entries(m["entry_ids"].combine_chunks(), n_entries)
    nz = np.flatnonzero(c)
    return nz.astype(np.int32), c[nz]


class BalanceStage(Stage):
    name = "balance"
    pool_columns = ["uid"]

    def counts_path(self) -> str:
        return self.rd.path("balance", "entry_counts.parquet")

    def prepare(self, shards: list[str]) -> dict:
        from curate.vocab import load_vocabulary

        entries = load_vocabulary(self.cfg.match.metadata)
        total = np.zeros(len(entries), np.int64)

        def add(outcome) -> None:
            if outcome.ok:
                ids, c = outcome.value
                np.add.at(total, ids, c)
                outcome.value = None  # keep the driver's memory flat

        outs = engine.map_items(partial(shard_counts, self.rd.url, self.before, len(entries)),
                                shards, max_retries=self.cfg.run.max_retries,
                                timeout_s=self.cfg.run.shard_timeout_s, on_done=add,
                                desc="balance: count entries")
        failed = [o for o in outs if not o.ok]
        if failed:
            raise RuntimeError(f"balance: counting failed on {len(failed)} shards, e.g. "
                               f"{failed[0].item}: {failed[0].error}")
        table = pa.table({"entry_id": pa.array(np.arange(len(entries)), pa.int32()),
                          "entry": pa.array(entries, pa.string()),
                          "count": pa.array(total, pa.int64())})
        write_parquet_atomic(self.rd.fs, self.counts_path(), table)
        digest = hashlib.sha256(total.tobytes()).hexdigest()[:16]
        head = int((total > self.section.t).sum())
        return {"counts_digest": digest, "entries_matched": int((total > 0).sum()),
                "head_entries": head}

    def _counts(self) -> np.ndarray:
        key = self.spec.extra["counts_digest"]
        if key not in _COUNTS:
            _COUNTS.clear()
            t = read_table(self.rd.fs, self.counts_path(), ["count"])
            _COUNTS[key] = t["count"].to_numpy()
        return _COUNTS[key]

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.algorithms.balancing import draw_kept, keep_prob

        m = matched(self.rd, self.before, shard)
        ids = m["entry_ids"].combine_chunks()
        counts = self._counts()
        t, seed = self.section.t, self.section.seed
        prob = keep_prob(ids, counts, t).astype(np.float32)
        kept = draw_kept(m["uid"].combine_chunks(), ids, counts, t, seed)
        no_match = pc.equal(pc.list_value_length(ids), 0)
        reason = pc.if_else(pa.array(kept), pa.scalar(None, pa.string()),
                            pc.if_else(no_match, "no metadata match",
                                       "not sampled by balancing"))
        return pa.table({"uid": m["uid"], "keep_prob": pa.array(prob, pa.float32()),
                         "kept": pa.array(kept, pa.bool_()), "reason": reason})
