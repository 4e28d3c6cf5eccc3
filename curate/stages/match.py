"""match: MetaCLIP substring matching of each surviving caption against the vocabulary.

Output ``match/part-NNNNN.parquet``: uid, entry_ids (list<int32>, sorted, unique). The
matcher (curate.algorithms.matching) is built once per worker process and reused for every shard.
Matching decides nothing: pairs matching no entry are dropped by balance, with that reason.
"""

from __future__ import annotations

import pyarrow as pa

from curate.stages.base import Stage

_MATCHERS: dict[tuple[str, str], object] = {}


def get_matcher(metadata: str, boundary: str):
    """The (cached) Matcher and entries for a vocabulary; built once per process."""
    from curate.algorithms.matching import Matcher
    from curate.vocab import load_vocabulary

    key = (metadata, boundary)
    if key not in _MATCHERS:
        entries = load_vocabulary(metadata)
        _MATCHERS.clear()
        _MATCHERS[key] = (Matcher(entries, boundary=boundary), entries)
    return _MATCHERS[key]


class MatchStage(Stage):
    name = "match"
    pool_columns = ["uid", "caption"]

    def setup(self) -> None:
        get_matcher(self.section.metadata, self.section.boundary)

    def prepare(self, shards: list[str]) -> dict:
        # fail on a bad vocabulary once, on the driver, before any worker starts
        from curate.vocab import load_vocabulary

        entries = load_vocabulary(self.section.metadata)
        return {"entries": len(entries)}

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        matcher, _ = get_matcher(self.section.metadata, self.section.boundary)
        ids = matcher.match(inputs["caption"].combine_chunks())
        return pa.table({"uid": inputs["uid"].combine_chunks(), "entry_ids": ids})
