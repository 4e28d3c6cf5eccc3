"""DataComp-style basic filters of the score stage, vectorised over a shard.

Each rule gives its own reason code, checked in a fixed order (a pair is counted under the
first rule it fails): words, characters, image side, aspect ratio. Words are counted by
``word_rule``: ``python_split`` is ``len(caption.split())`` (Unicode whitespace, as Python
splits; DataComp's basic filter), ``fasttext_tokens`` is ``len(fasttext.tokenize(caption))``
(DataComp's image-based ``caption_filter``: fastText splits on ASCII space, ``\n``, ``\r``,
``\t``, ``\v``, ``\f`` and NUL only, and each newline is also a ``</s>`` token, so
"Sunset\n" is two tokens and "Golden\u00a0retriever" one). Characters are code points.
A width of 0 (unknown: the pool brought no image size) skips the two image rules.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_serializer

from curate.config import Section


class BasicFilterConfig(Section):
    """DataComp's basic filtering, applied before the model runs."""

    min_caption_words: int = Field(0, ge=0)
    min_caption_chars: int = Field(0, ge=0)
    min_image_side: int = Field(0, ge=0)
    max_aspect_ratio: float | None = Field(None, ge=1)
    word_rule: Literal["python_split", "fasttext_tokens"] = Field(
        "python_split", description="how min_caption_words counts: python_split = "
        "len(caption.split()) (DataComp's basic filter); fasttext_tokens = "
        "len(fasttext.tokenize(caption)) (DataComp's image-based caption filter)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Leave ``word_rule`` out while it is the default, so score sections written before
        it existed keep their fingerprint (a rerun does not embed the pool again)."""
        data = handler(self)
        if self.word_rule == "python_split" and isinstance(data, dict):
            data.pop("word_rule", None)
        return data


def word_counts(captions: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``len(c.split())`` per caption (nulls count 0), without a Python loop over rows."""
    parts = pc.utf8_split_whitespace(pc.fill_null(captions, ""))
    if isinstance(parts, pa.ChunkedArray):
        parts = parts.combine_chunks()
    n = len(parts)
    flat = pc.list_flatten(parts)
    if not len(flat):
        return np.zeros(n, np.int64)
    parent = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False)
    nonempty = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    return np.bincount(parent[nonempty], minlength=n)


#: fastText's ``Dictionary::readWord`` separators (src/dictionary.cc): bytes, so no
#: non-ASCII whitespace; a token is a maximal run of anything else
_FASTTEXT_TOKEN = r"[^ \t\n\r\x0b\x0c\x00]+"


def fasttext_token_counts(captions: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``len(fasttext.tokenize(c))`` per caption (nulls count 0), in Arrow.

    readWord returns each maximal run of non-separator bytes, and a newline met with an
    empty word returns EOS (``</s>``); a newline ending a word is pushed back and read
    again, so every newline is exactly one ``</s>`` token: runs + newlines."""
    text = pc.fill_null(captions, "")
    runs = pc.count_substring_regex(text, _FASTTEXT_TOKEN)
    newlines = pc.count_substring(text, "\n")
    return pc.add(runs, newlines).to_numpy(zero_copy_only=False).astype(np.int64)


def basic_reasons(captions: pa.Array | pa.ChunkedArray, width: np.ndarray, height: np.ndarray,
                  cfg: Any) -> tuple[list[str | None], list[str | None]]:
    """(reason code, detail) per pair; None where the pair passes every rule."""
    n = len(captions)
    w = np.nan_to_num(np.asarray(width, np.float64))
    h = np.nan_to_num(np.asarray(height, np.float64))
    code = np.full(n, None, object)
    detail = np.full(n, None, object)

    def mark(mask: np.ndarray, reason: str, text: np.ndarray | str) -> None:
        new = mask & (code == None)  # noqa: E711 - elementwise on an object array
        code[new] = reason
        detail[new] = text[new] if isinstance(text, np.ndarray) else text

    if cfg.min_caption_words:
        tokens = cfg.word_rule == "fasttext_tokens"
        words = (fasttext_token_counts if tokens else word_counts)(captions)
        mark(words < cfg.min_caption_words, "caption_too_few_words",
             f"fewer than {cfg.min_caption_words} {'fastText tokens' if tokens else 'words'}")
    if cfg.min_caption_chars:
        chars = pc.fill_null(pc.utf8_length(pc.fill_null(captions, "")), 0).to_numpy(
            zero_copy_only=False)
        mark(chars < cfg.min_caption_chars, "caption_too_short",
             f"fewer than {cfg.min_caption_chars} characters")
    known = w > 0
    if cfg.min_image_side:
        side = np.minimum(w, h)
        mark(known & (side < cfg.min_image_side), "image_too_small",
             f"shorter side below {cfg.min_image_side} px")
    if cfg.max_aspect_ratio:
        ratio = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)
        mark(known & (ratio > cfg.max_aspect_ratio), "aspect_ratio_too_high",
             f"above {cfg.max_aspect_ratio:g}")
    return code.tolist(), detail.tolist()
