"""Which entry boundaries need a space: MetaCLIP 2's rule exactly, and curate's variant.

MetaCLIP 2 (``metaclip/curation/substr_matching.py`` in facebookresearch/MetaCLIP) keeps
v1's ``spacing`` for captions but pads an entry with a space only on a side whose character
is not "CJK or similar" (``get_spaced_metadata``): an entry starting with such a character
matches wherever it occurs, without a space before it; likewise at its end. A caption is
``txt.strip()``-ed before ``spacing`` (``count_per_shard`` in ``metaclip/curation/curate.py``).
Its ``is_cjk_or_similar`` is true for

- the code points in :data:`CJK_OR_SIMILAR_RANGES` (CJK unified ideographs, extensions A-F,
  compatibility ideographs, radicals supplement, Kangxi radicals, ideographic description
  characters; Thai, Lao, Myanmar, Khmer, Tibetan), and
- ``is_punctuation``: any of Python's ``string.punctuation`` (the 32 ASCII punctuation
  characters) or of :data:`ADDITIONAL_PUNCTUATION` (25 full-width / CJK punctuation marks).

So, unlike v1, an entry that starts or ends with punctuation (``(film)``, ``C++``, ``'s``)
needs no space on that side. Kana (Hiragana, Katakana) and Hangul are *not* in the set: an
entry starting with a kana character needs a space before it, as in the released code.
``boundary="metaclip2"`` is this rule (:func:`metaclip2_key`), reproduced exactly.

``boundary="no_space_scripts"`` is curate's own variant, called ``metaclip2`` before it was
found not to be MetaCLIP 2's rule: :data:`NO_SPACE_SCRIPT_RANGES` (MetaCLIP 2's script
ranges plus kana, U+3005-U+3007 and CJK extension G) drop the space requirement, punctuation
does not, and captions are not stripped. It suits Japanese captions better (kana-initial
words match inside a sentence); it does not reproduce MetaCLIP 2.

Pure functions on strings and Arrow arrays; :mod:`curate.algorithms.matching` uses them.
"""

from __future__ import annotations

import string

import pyarrow as pa
import pyarrow.compute as pc

#: MetaCLIP 2's ``is_cjk_or_similar`` code point ranges (inclusive), in its order.
CJK_OR_SIMILAR_RANGES: tuple[tuple[int, int], ...] = (
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0x3400, 0x4DBF),  # extension A
    (0x20000, 0x2A6DF),  # extension B
    (0x2A700, 0x2B73F),  # extension C
    (0x2B740, 0x2B81F),  # extension D
    (0x2B820, 0x2CEAF),  # extension E
    (0x2CEB0, 0x2EBEF),  # extension F
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0x2E80, 0x2EFF),  # CJK radicals supplement
    (0x2F00, 0x2FDF),  # Kangxi radicals
    (0x2FF0, 0x2FFF),  # ideographic description characters
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Burmese
    (0x1780, 0x17FF),  # Khmer
    (0x0F00, 0x0FFF),  # Tibetan
)

#: MetaCLIP 2's ``additional_punctuation`` (full-width and CJK punctuation), in its order.
ADDITIONAL_PUNCTUATION = "，。、；：？！“”‘’（）【】《》〈〉「」『』～—"

#: MetaCLIP 2's ``is_punctuation``: ``string.punctuation`` or :data:`ADDITIONAL_PUNCTUATION`.
METACLIP2_PUNCTUATION = frozenset(string.punctuation) | frozenset(ADDITIONAL_PUNCTUATION)

#: curate's ``no_space_scripts`` ranges (inclusive): MetaCLIP 2's, plus kana, U+3005-U+3007
#: and CJK extension G; no punctuation.
NO_SPACE_SCRIPT_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2EFF),  # CJK radicals supplement
    (0x2F00, 0x2FDF),  # Kangxi radicals
    (0x2FF0, 0x2FFF),  # ideographic description characters
    (0x3005, 0x3007),  # ideographic iteration mark, closing mark, number zero
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x2EBEF),  # CJK extensions B-F (and I)
    (0x30000, 0x3134F),  # CJK extension G
)

#: The characters Python's ``str.strip()`` removes (``str.isspace``, Python 3.11). MetaCLIP 2
#: strips captions with it; Arrow's own whitespace trim uses another definition, so the
#: set is spelled out (a test checks it against ``str.isspace``).
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003"
                 "\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def is_cjk_or_similar(ch: str) -> bool:
    """MetaCLIP 2's ``is_cjk_or_similar``: a script without spaces, or punctuation."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in CJK_OR_SIMILAR_RANGES) or \
        ch in METACLIP2_PUNCTUATION


def is_no_space_script_char(ch: str) -> bool:
    """curate's variant: ``ch`` is in :data:`NO_SPACE_SCRIPT_RANGES` (no punctuation)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in NO_SPACE_SCRIPT_RANGES)


def metaclip2_key(entry: str) -> str:
    """MetaCLIP 2's ``get_spaced_metadata`` for one entry: the substring to look for."""
    left = "" if is_cjk_or_similar(entry[0]) else " "
    right = "" if is_cjk_or_similar(entry[-1]) else " "
    return left + entry + right


def no_space_scripts_key(entry: str) -> str:
    """curate's ``no_space_scripts`` key: a space only next to characters of other scripts."""
    left = "" if is_no_space_script_char(entry[0]) else " "
    right = "" if is_no_space_script_char(entry[-1]) else " "
    return left + entry + right


def strip_captions(texts: pa.Array) -> pa.Array:
    """``str.strip()`` of every caption (nulls stay null), as MetaCLIP 2 does before matching.

    Why it matters: a caption ending in e.g. U+3000 (ideographic space) would otherwise end
    ``"dog\\u3000 "`` after spacing and not match ``" dog "``."""
    return pc.utf8_trim(texts, characters=PY_WHITESPACE)


def strip_text(text: str) -> str:
    """The same on one string (reference implementations)."""
    return text.strip()


__all__ = [
    "ADDITIONAL_PUNCTUATION",
    "CJK_OR_SIMILAR_RANGES",
    "METACLIP2_PUNCTUATION",
    "NO_SPACE_SCRIPT_RANGES",
    "PY_WHITESPACE",
    "is_cjk_or_similar",
    "is_no_space_script_char",
    "metaclip2_key",
    "no_space_scripts_key",
    "strip_captions",
]
