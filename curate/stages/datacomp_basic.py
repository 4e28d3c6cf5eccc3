"""datacomp_basic: DataComp's basic filter, exactly as its official code applies it.

Reference: mlfoundations/datacomp, ``baselines/apply_filter.py``,
``load_uids_with_basic_filter_helper`` (+ ``get_fasttext_language``). A pair is kept when

- ``len(text.split()) > 2`` and ``len(text) > 5`` — on the caption **as it is** (Python's
  ``str.split()`` on Unicode whitespace; ``len`` in code points; a newline counts as a
  character), not on the newline-replaced text;
- ``min(original_width, original_height) >= 200`` and ``max / min <= 3.0`` (true division,
  so 600 x 200 passes and 603 x 200 does not). A missing size is NaN in DataComp's pandas
  frame, and every comparison with NaN is false: such a pair is dropped;
- fastText's top label of ``text.replace("\\n", " ")`` is ``en`` (:mod:`curate.models.langid`).

Each rule has its own reason code; a pair counts under the first rule it fails, in the
order of ``reasons`` (captions, sizes, then language, so fastText runs only on pairs the
other rules kept; the kept set does not depend on the order).

Sizes are the *original* image size: the pool's ``original_width``/``original_height``
when it has both (DataComp's metadata does: no image needed), else those columns of the
nearest earlier download stage, else that stage's ``width``/``height`` (the stored image:
after ``download.resize`` these are not the original size; run.json says which was used).
Language is the ``lang`` of the nearest earlier ``language`` stage when there is one (same
model code, so the same labels), else predicted here with ``model`` (default the bundled
lid.176.ftz; DataComp used lid.176.bin).

Output ``datacomp_basic/part-NNNNN.parquet``: uid, lang (null where no language was
needed: the pair failed an earlier rule), kept, reason, detail (the failing value).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curate.config import Section
from curate.errors import ConfigError
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions
from curate.stages.language import pool_names
from curate.stages.score_filters import word_counts

#: DataComp's constants (load_uids_with_basic_filter_helper)
MIN_WORDS_EXCLUSIVE = 2  # len(text.split()) > 2
MIN_CHARS_EXCLUSIVE = 5  # len(text) > 5
MIN_SIDE = 200  # min(w, h) >= 200
MAX_ASPECT = 3.0  # max(w, h) / min(w, h) <= 3.0
LANGUAGE = "en"
SIZES = ("original_width", "original_height")


class DataCompBasicConfig(Section):
    model: str | None = Field(
        None, description="fastText model when no language stage runs before (e.g. "
        "lid.176.bin, DataComp's); unset: the bundled lid.176.ftz")


def _file_names(rd: Any, folder: str, shard: str) -> list[str]:
    with rd.fs.open(rd.shard_path(folder, shard), "rb") as f:
        return pq.read_schema(f).names


def _as_float(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Sizes as float64 with NaN for null, as pandas holds a column with missing values."""
    col = pc.cast(col, pa.float64())
    return pc.fill_null(col, np.nan).to_numpy(zero_copy_only=False)


def basic_codes(captions: Any, width: np.ndarray, height: np.ndarray,
                lang: list[str | None] | None, predict: Any = None
                ) -> tuple[list[str | None], list[str | None], list[str | None]]:
    """(reason, detail, lang) per pair; reason None = kept. ``lang`` given, or None to
    call ``predict(texts) -> labels`` on the pairs every other rule kept.

    Words are score's ``word_counts`` (Arrow's whitespace split, checked equal to Python's
    ``len(c.split())`` separating letters by each of the 1,112,064 code points), characters
    Arrow's ``utf8_length`` (code points, as Python's ``len``)."""
    arr = captions if isinstance(captions, pa.Array | pa.ChunkedArray) else pa.array(
        captions, pa.string())
    arr = pc.fill_null(arr, "")
    n = len(arr)
    words = word_counts(arr)
    chars = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    w = np.asarray(width, np.float64)
    h = np.asarray(height, np.float64)
    side = np.minimum(w, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(w, h) / side
    code = np.full(n, None, object)
    detail = np.full(n, None, object)

    def mark(bad: np.ndarray, reason: str, text: Any) -> None:
        for i in np.flatnonzero(bad & (code == None)):  # noqa: E711 - elementwise
            code[i] = reason
            detail[i] = text(i)

    def size(i: int) -> str:
        return f"{w[i]:g}x{h[i]:g}"

    mark(~(words > MIN_WORDS_EXCLUSIVE), "basic_too_few_words", lambda i: f"{words[i]} words")
    mark(~(chars > MIN_CHARS_EXCLUSIVE), "basic_too_few_chars",
         lambda i: f"{chars[i]} characters")
    mark(np.isnan(w) | np.isnan(h), "basic_size_unknown", size)
    mark(~(side >= MIN_SIDE), "basic_image_too_small", size)
    mark(~(ratio <= MAX_ASPECT), "basic_aspect_ratio_too_high",
         lambda i: f"aspect {ratio[i]:.4g} ({size(i)})")
    todo = np.flatnonzero(code == None)  # noqa: E711
    labels: list[str | None] = [None] * n
    if lang is not None:
        labels = list(lang)
    elif len(todo):
        texts = pc.take(arr, pa.array(todo, pa.int64())).to_pylist()
        for i, label in zip(todo, predict(texts)):
            labels[i] = label
    not_en = np.array([label != LANGUAGE for label in labels], bool)
    mark(not_en, "basic_not_english", lambda i: f"lang {labels[i]}")
    return code.tolist(), detail.tolist(), labels


class DataCompBasicStage(Stage):
    kind = "datacomp_basic"
    folder = "datacomp_basic"
    decides = True
    Config = DataCompBasicConfig
    schema = pa.schema([("uid", pa.string()), ("lang", pa.string()), *DECISION_FIELDS])
    reasons = {
        "basic_too_few_words": "DataComp basic: 2 words or fewer (len(text.split()) <= 2)",
        "basic_too_few_chars": "DataComp basic: 5 characters or fewer (len(text) <= 5)",
        "basic_size_unknown": "DataComp basic: original width or height missing",
        "basic_image_too_small": "DataComp basic: shorter original side below 200 px",
        "basic_aspect_ratio_too_high": "DataComp basic: original aspect ratio above 3.0",
        "basic_not_english": "DataComp basic: fastText lid.176 label is not en",
    }
    help = "DataComp's basic filter: English (fastText), >2 words, >5 chars, size, aspect."

    def steps(self) -> list:
        return [GlobalStep.on_driver("check", self._check), ShardStep()]

    # -- driver side
    def preflight(self) -> list[str]:
        """Where sizes come from, and the fastText model (or the language stage's)."""
        from curate.models import langid
        from curate.stages._needs import pool_names

        problems = []
        lang = self.previous("language")
        theirs = self.pipeline.section(lang.name).model if lang is not None else None
        if lang is not None and self.section.model not in (None, theirs):
            problems.append(f"{self.name}.model: the {lang.name} stage before it gives the "
                            f"language (model {theirs or 'lid.176.ftz'}); set the model "
                            "there, not here")
        elif lang is None:
            try:
                langid.resolve(self.section.model)
            except ConfigError as err:
                problems.append(f"{self.name}.model: {err}")
        names = pool_names(self)
        if names is not None and not set(SIZES) <= set(names) and \
                self.previous("download") is None:
            problems.append(f"{self.name}: needs image sizes: the pool brings no "
                            "original_width/original_height columns and no download stage "
                            "runs before it")
        return problems

    def _check(self, _: Any) -> dict[str, Any]:
        """Fail fast on a pipeline that cannot give sizes, and load the model once."""
        from curate.models import langid

        info: dict[str, Any] = {}
        lang = self.previous("language")
        if lang is not None:
            theirs = self.pipeline.section(lang.name).model
            if self.section.model is not None and self.section.model != theirs:
                raise ConfigError(
                    f"{self.name}.model: the {lang.name} stage before it gives the language "
                    f"(model {theirs or 'lid.176.ftz'}); set the model there, not here")
            info["language"] = f"{lang.name} stage"
        else:
            info.update(langid.describe(self.section.model))
            info["labels"] = len(info["labels"])
            info["language"] = info["model"]
        pool = set(pool_names(self.rd, self.shards[0])) if self.shards else set(SIZES)
        dl = self.previous("download")
        if set(SIZES) <= pool:
            info["sizes"] = "pool original_width/original_height"
        elif dl is not None:
            info["sizes"] = f"{dl.name} stage (original_width/original_height, else " \
                            "width/height)"
        else:
            raise ConfigError(
                f"{self.name}: needs image sizes: the pool brings no original_width/"
                "original_height columns and no download stage runs before it")
        return info

    # -- worker side
    def _model(self) -> Any:
        from curate.models import langid

        return langid.load(self.state["check"]["path"])

    def setup(self) -> None:
        if "path" in self.state.get("check", {}):
            self._model()

    def inputs(self, shard: str) -> pa.Table:
        names = pool_names(self.rd, shard)
        from_pool = set(SIZES) <= set(names)
        t = self.survivors(shard, ["uid", "caption", *(SIZES if from_pool else ())])
        uids = t["uid"].combine_chunks()
        extra: dict[str, tuple[str, list[str]]] = {}
        dl = self.previous("download")
        if not from_pool and dl is not None:
            have = _file_names(self.rd, dl.folder, shard)
            src = list(SIZES) if set(SIZES) <= set(have) else ["width", "height"]
            extra[dl.folder] = (dl.folder, src)
        lang = self.previous("language")
        if lang is not None:
            extra[lang.folder] = (lang.folder, ["lang"])
        for folder, cols in extra.values():
            other = self.rd.read(folder, shard, ["uid", *cols])
            idx = pc.index_in(uids, value_set=other["uid"].combine_chunks())
            for c in cols:
                name = {"width": SIZES[0], "height": SIZES[1]}.get(c, c)
                t = t.append_column(name, pc.take(other[c].combine_chunks(), idx))
        return t

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.models import langid

        n = inputs.num_rows
        names = inputs.column_names
        w = _as_float(inputs[SIZES[0]]) if SIZES[0] in names else np.full(n, np.nan)
        h = _as_float(inputs[SIZES[1]]) if SIZES[1] in names else np.full(n, np.nan)
        lang = inputs["lang"].to_pylist() if "lang" in names else None
        codes, details, labels = basic_codes(
            inputs["caption"], w, h, lang,
            lambda texts: langid.predict(self._model(), texts)[0])
        kept = pa.array([c is None for c in codes], pa.bool_())
        return pa.table({"uid": inputs["uid"], "lang": pa.array(labels, pa.string()),
                         **decisions(kept, pa.array(codes, pa.string()),
                                     pa.array(details, pa.string()))})
