"""match: MetaCLIP substring matching of each surviving caption against the vocabulary.

Output ``match/part-NNNNN.parquet``: uid, entry_ids (list<int32>, sorted, unique). The
matcher (curate.algorithms.matching) is built once per worker process and reused for every shard.
Matching decides nothing: pairs matching no entry are dropped by balance, with that reason.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from curate.config import Section
from curate.stages.base import GlobalStep, ShardStep, Stage

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


class MatchConfig(Section):
    metadata: str = "default"
    boundary: Literal["metaclip1", "metaclip2"] = "metaclip1"


class MatchStage(Stage):
    kind = "match"
    folder = "match"
    view = "matches"
    Config = MatchConfig
    schema = pa.schema([("uid", pa.string()), ("entry_ids", pa.list_(pa.int32()))])
    joins = ("entry_ids",)
    pool_columns = ["uid", "caption"]
    help = "MetaCLIP substring matching of each surviving caption against the vocabulary."

    def steps(self) -> list:
        # fail on a bad vocabulary once, on the driver, before any worker starts
        return [GlobalStep.on_driver("vocabulary", self._check), ShardStep()]

    def setup(self) -> None:
        get_matcher(self.section.metadata, self.section.boundary)

    def _check(self, _: object) -> dict:
        from curate.vocab import load_vocabulary

        return {"entries": len(load_vocabulary(self.section.metadata))}

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        matcher, _ = get_matcher(self.section.metadata, self.section.boundary)
        ids = matcher.match(inputs["caption"].combine_chunks())
        return pa.table({"uid": inputs["uid"].combine_chunks(), "entry_ids": ids})
