"""match: MetaCLIP substring matching of each surviving caption against the vocabulary.

Output ``match/part-NNNNN.parquet``: uid, entry_ids (list<int32>, sorted, unique). The
matcher (curate.algorithms.matching) is built once per worker process and reused for every shard.
Matching decides nothing: pairs matching no entry are dropped by balance, with that reason.

Per-language metadata (MetaCLIP 2): ``metadata: {en: FILE, de: FILE, ...}`` matches each
caption against its own language's list (curate.algorithms.matching_languages), with entry
ids in one global space (curate.vocab.languages). A caption's language is the ``lang``
column of the nearest earlier ``language`` stage, else the pool's ``lang`` column; one of
them must exist (checked on the driver before any worker starts).
"""

from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import field_validator

from curate.config import Section
from curate.errors import InputError
from curate.stages.base import GlobalStep, ShardStep, Stage

_MATCHERS: dict[str, object] = {}


def get_matcher(metadata, boundary: str, sizes: dict[str, int] | None = None):
    """The (cached) matcher for a vocabulary; built once per process.

    With per-language metadata it is a LanguageMatcher (``match(texts, langs)``); given the
    list sizes (the driver's ``vocabulary`` step records them), a worker reads only the
    lists of the languages it meets."""
    from curate.algorithms.matching import Matcher
    from curate.algorithms.matching_languages import LanguageMatcher
    from curate.vocab import load_metadata, load_vocabulary

    key = json.dumps([metadata, boundary, sizes], sort_keys=True)
    if key not in _MATCHERS:
        if isinstance(metadata, dict) and sizes is not None:
            m = LanguageMatcher({lang: _Loader(path) for lang, path in metadata.items()},
                                boundary=boundary, sizes=sizes)
        elif isinstance(metadata, dict):
            m = LanguageMatcher(load_metadata(metadata).by_language(), boundary=boundary)
        else:
            m = Matcher(load_vocabulary(metadata), boundary=boundary)
        _MATCHERS.clear()
        _MATCHERS[key] = m
    return _MATCHERS[key]


class _Loader:
    """Reads one language's list when first needed (picklable, unlike a lambda)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self) -> list[str]:
        from curate.vocab import read_vocabulary

        return read_vocabulary(self.path)  # uncached: the matcher keeps what it needs


def caption_langs(rd, language: str | None, shard: str, uids: pa.Array) -> pa.Array:
    """Each uid's ``lang`` as match reads it: the ``language`` stage's (its folder given),
    else the pool's; null where the uid has none. Balance reads it too, to say which
    languages fell to ``other``."""
    t = rd.read(language or "pool", shard, ["uid", "lang"])
    idx = pc.index_in(uids, value_set=t["uid"].combine_chunks())
    return pc.take(t["lang"].combine_chunks(), idx).cast(pa.string())


class MatchConfig(Section):
    #: one vocabulary (a file or a built-in name), or {language: vocabulary}
    metadata: str | dict[str, str] = "default"
    #: metaclip1 (v1), metaclip2 (MetaCLIP 2's substr_matching.py, exactly) or
    #: no_space_scripts (curate's variant; see curate.algorithms.matching_metaclip2)
    boundary: Literal["metaclip1", "metaclip2", "no_space_scripts"] = "metaclip1"

    @field_validator("metadata")
    @classmethod
    def _languages(cls, v):
        if isinstance(v, dict):
            from curate.vocab.languages import check_languages

            try:
                check_languages(v)
            except InputError as err:
                raise ValueError(str(err)) from None
        return v


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
        self._matcher()

    def _matcher(self):
        sizes = (self.state.get("vocabulary") or {}).get("languages")
        return get_matcher(self.section.metadata, self.section.boundary,
                           sizes if self._per_language() else None)

    def _per_language(self) -> bool:
        return isinstance(self.section.metadata, dict)

    def _check(self, _: object) -> dict:
        from curate.vocab import load_metadata

        meta = load_metadata(self.section.metadata)
        if not meta.per_language:
            return {"entries": len(meta.vocabularies[0])}
        if self.previous("language") is None and not self._pool_has_lang():
            raise InputError("match.metadata maps languages to vocabularies, but no `language` "
                             "stage runs before match and the pool has no `lang` column")
        return {"entries": len(meta.entries),
                "languages": {lang: len(v) for lang, v in zip(meta.languages,
                                                              meta.vocabularies, strict=True)}}

    def preflight(self) -> list[str]:
        """The vocabulary files (a built-in name or a file; one per language), and with
        per-language metadata a language per caption."""
        from curate.stages import _needs
        from curate.vocab import BUILTIN, METADATA_DIR

        meta = self.section.metadata
        files = ({f"{self.name}.metadata.{lang}": p for lang, p in meta.items()}
                 if isinstance(meta, dict) else {f"{self.name}.metadata": meta})
        problems = []
        for key, path in files.items():
            path = str(METADATA_DIR / BUILTIN[path]) if path in BUILTIN else path
            problems += _needs.missing_file(key, path, "a vocabulary: one entry per line or "
                                            f"a JSON list; built-in: {', '.join(BUILTIN)}")
        if isinstance(meta, dict) and self.previous("language") is None:
            problems += _needs.columns(self, ["lang"], "metadata maps languages to "
                                       "vocabularies and no language stage runs before match")
        return problems

    def _pool_has_lang(self) -> bool:
        shards = self.shards or self.rd.pool_shards()
        if not shards:
            return False
        with self.rd.fs.open(self.rd.shard_path("pool", shards[0]), "rb") as f:
            return "lang" in pq.read_schema(f).names

    def inputs(self, shard: str) -> pa.Table:
        """uid, caption (+ lang with per-language metadata) of the surviving pairs."""
        if not self._per_language():
            return super().inputs(shard)
        ref = self.previous("language")
        if ref is None:
            t = self.survivors(shard, ["uid", "caption", "lang"])
            i = t.column_names.index("lang")
            return t.set_column(i, "lang", t["lang"].cast(pa.string()))
        t = self.survivors(shard, ["uid", "caption"])
        return t.append_column("lang", caption_langs(self.rd, ref.folder, shard,
                                                     t["uid"].combine_chunks()))

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        matcher = self._matcher()
        captions = inputs["caption"].combine_chunks()
        if self._per_language():
            ids = matcher.match(captions, inputs["lang"].combine_chunks())
        else:
            ids = matcher.match(captions)
        return pa.table({"uid": inputs["uid"].combine_chunks(), "entry_ids": ids})
