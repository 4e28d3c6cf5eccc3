"""Uids as 64-bit keys and as WebDataset member keys: the one place this is defined.

A pair's uid is an arbitrary string (curate's own uids are 32 hex digits, but a
pool may bring its own: ``000012345``, ``img-000001``, URLs, unicode, the empty string).
Several stages need a number per uid that does not depend on row order or sharding: the
k-means training sample, the MetaCLIP balancing draws, and the tie-break of the exact top-k
score filter. They must all agree, so the rule lives here once:

- :func:`uid_key` / :func:`uid_keys`: ``int(uid[:16], 16)`` when the first 16 characters
  are hex digits (so curate's own uids map to their leading 64 bits, cheaply and without
  hashing), otherwise the first 8 bytes of ``sha256(uid as UTF-8)`` read big-endian.
- :func:`uid_keys128`: a 128-bit key (hex uids decoded, others hashed) for ingest's
  duplicate check, where 64 bits would collide at web scale.
- :func:`splitmix64` / :func:`mix64`: the splitmix64 finaliser (Steele et al. 2014), used
  to turn keys into independent-looking uniform bits.
- :func:`wds_key` / :func:`wds_keys`: a tar-safe WebDataset key for any uid.

Pure NumPy/Arrow: no I/O. Changing any of these changes which pairs a run keeps.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: splitmix64's golden-gamma increment and its two multipliers.
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
M64 = (1 << 64) - 1

_GOLDEN_U = np.uint64(GOLDEN)
_MIX1_U = np.uint64(MIX1)
_MIX2_U = np.uint64(MIX2)

_HEX_CHARS = frozenset("0123456789abcdefABCDEF")
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)  # byte -> nibble, 255 = not a hex digit
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VALUE[_c] = 10 + _i


# --------------------------------------------------------------------------- mixing


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser without the increment, on a uint64 array (wrapping mod 2^64).

    ``z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB;
    return z ^ z >> 31``. A bijection on uint64 (what the balancing draws use).
    """
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _MIX1_U
        z = (z ^ (z >> np.uint64(27))) * _MIX2_U
    return z ^ (z >> np.uint64(31))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 output function on a uint64 array: ``mix64(x + 0x9E3779B97F4A7C15)``.

    With ``x`` a counter this is the reference splitmix64 generator (state 0 gives
    0xE220A8397B1DCDAF); its outputs pass BigCrush, so it turns structured keys (uids,
    seeds) into independent-looking uniform bits. Used by the k-means sample.
    """
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN_U
    return mix64(z)


def mix64_int(z: int) -> int:
    """:func:`mix64` on one Python int (taken mod 2^64): the readable reference version."""
    z &= M64
    z = ((z ^ (z >> 30)) * MIX1) & M64
    z = ((z ^ (z >> 27)) * MIX2) & M64
    return z ^ (z >> 31)


def splitmix64_int(x: int) -> int:
    """:func:`splitmix64` on one Python int (taken mod 2^64)."""
    return mix64_int((x + GOLDEN) & M64)


# --------------------------------------------------------------------------- 64-bit keys


def uid_key(uid: str) -> int:
    """The 64-bit key of one uid (reference version of :func:`uid_keys`).

    ``int(uid[:16], 16)`` when the first 16 characters are hex digits (0-9, a-f, A-F; so
    case does not matter), else the first 8 bytes of ``sha256(uid.encode("utf-8"))`` read
    big-endian. Any string is a legal uid, the empty string included.
    """
    if not isinstance(uid, str):
        raise TypeError(f"uid must be a str, got {type(uid).__name__}")
    head = uid[:16]
    if len(head) == 16 and all(c in _HEX_CHARS for c in head):
        return int(head, 16)
    return int.from_bytes(hashlib.sha256(uid.encode("utf-8")).digest()[:8], "big")


def _as_string_array(uids: Any) -> pa.Array:
    """Any supported uid collection as one Arrow string array (nulls raise ValueError).

    NumPy fixed-width arrays go through ``tolist()``: Arrow would keep their NUL padding.
    Bytes are decoded as UTF-8.
    """
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks() if uids.num_chunks else pa.array([], pa.string())
    if isinstance(uids, np.ndarray):
        if uids.dtype.kind in "US":
            uids = uids.ravel().tolist()
        elif uids.dtype.kind == "O":
            uids = uids.ravel()
        else:
            raise TypeError(f"uids must be strings, got a {uids.dtype} array")
    if not isinstance(uids, pa.Array):
        try:
            uids = pa.array(uids, pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TypeError(f"uids must be str (or UTF-8 bytes): {e}") from None
    if pa.types.is_dictionary(uids.type):
        uids = uids.dictionary_decode()
    if not (pa.types.is_string(uids.type) or pa.types.is_large_string(uids.type)):
        if pa.types.is_binary(uids.type) or pa.types.is_large_binary(uids.type):
            uids = uids.cast(pa.string())  # validates UTF-8
        else:
            raise TypeError(f"uids must be a string array, got {uids.type}")
    if uids.null_count:
        raise ValueError(f"uids contains {uids.null_count} nulls: every pair needs a uid")
    return uids


def _nibbles(fixed: pa.Array, width: int) -> np.ndarray:
    """The hex value of every byte of ``fixed`` (each element exactly ``width`` bytes), 255
    where a byte is not a hex digit: read from the string buffer, no Python string per uid."""
    fixed = fixed.cast(pa.large_string())
    offsets = np.frombuffer(fixed.buffers()[1], np.int64)[fixed.offset:]
    raw = np.frombuffer(fixed.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[len(fixed)]]
    return _HEX_VALUE[raw.reshape(-1, width)]


def uid_keys128(uids: Any) -> tuple[np.ndarray, np.ndarray]:
    """A 128-bit key per uid, as two uint64 halves (hi, lo): ingest's duplicate check.

    The uid's 16 bytes when it is 32 lowercase hex digits (curate's own uids: decoded, not
    hashed), else the first 16 bytes of its sha256 (so it is never mistaken for a hex one).
    Two distinct uids share a key with probability ~n^2 / 2^129.
    """
    arr = _as_string_array(uids)
    n = len(arr)
    raw = np.empty((n, 16), np.uint8)
    is_hex = pc.match_substring_regex(arr, "^[0-9a-f]{32}$").to_numpy(zero_copy_only=False)
    if is_hex.any():
        nib = _nibbles(arr if is_hex.all() else arr.filter(pa.array(is_hex)), 32)
        raw[is_hex] = (nib[:, 0::2] << 4) | nib[:, 1::2]
    if not is_hex.all():
        others = arr.filter(pa.array(~is_hex)).to_pylist()
        raw[~is_hex] = np.frombuffer(b"".join(hashlib.sha256(u.encode()).digest()[:16]
                                              for u in others), np.uint8).reshape(-1, 16)
    keys = np.ascontiguousarray(raw).view("<u8").reshape(-1, 2)
    return keys[:, 0].copy(), keys[:, 1].copy()


def uid_keys(uids: Any) -> np.ndarray:
    """:func:`uid_key` of every uid, as uint64, vectorised.

    ``uids``: a pa.Array / pa.ChunkedArray (string, large_string, binary, dictionary), a
    list, or a NumPy str/bytes/object array. Nulls raise ``ValueError``. Hex-prefixed uids
    (curate's own) are decoded in NumPy without a Python loop; only the others are hashed
    with hashlib one by one.
    """
    arr = _as_string_array(uids)
    n = len(arr)
    keys = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return keys
    head = pc.utf8_slice_codeunits(arr.cast(pa.large_string()), 0, 16)
    # 16 bytes <=> 16 ASCII characters (a non-ASCII character takes >= 2 bytes)
    ok = pc.binary_length(head).to_numpy(zero_copy_only=False) == 16
    nib = np.full((n, 16), 255, dtype=np.uint8)
    if ok.any():
        nib[ok] = _nibbles(head if ok.all() else head.filter(pa.array(ok)), 16)
    hexa = ok & (nib < 16).all(axis=1)
    packed = (nib[hexa, 0::2] << 4) | nib[hexa, 1::2]  # 8 bytes per uid, most significant first
    keys[hexa] = np.ascontiguousarray(packed).view(">u8").ravel()
    other = np.flatnonzero(~hexa)
    if other.size:
        strings = arr.take(pa.array(other)).to_pylist()
        keys[other] = np.fromiter(
            (int.from_bytes(hashlib.sha256(u.encode("utf-8")).digest()[:8], "big")
             for u in strings),
            dtype=np.uint64,
            count=other.size,
        )
    return keys


# --------------------------------------------------------------------------- WebDataset keys

_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_-]")
#: Longest key :func:`wds_key` returns (a safe uid; a derived key is at most 40 + 1 + 16).
WDS_KEY_MAX = 64


def wds_key(uid: str) -> str:
    """A WebDataset member key for ``uid``, safe in a tar name and for key/extension split.

    Rule: if ``uid`` fully matches ``[A-Za-z0-9_-]{1,64}`` it is the key as is. Otherwise
    the key is ``<prefix>_<h>`` where ``h`` is the first 16 hex digits (lowercase) of
    ``sha256(uid.encode("utf-8"))`` and ``prefix`` is ``uid`` with every character outside
    ``[A-Za-z0-9_-]`` replaced by ``_``, cut to its first 40 characters; when that prefix
    is empty (the empty uid) it is ``u``, so the key is ``u_<h>``.

    Why: webdataset splits a member name at the first ``.`` of its basename into key and
    extension, and treats ``/`` as a directory, so a key must hold neither; a key is at
    most 64 ASCII characters, so ``{key}.json`` fits a USTAR name (100 bytes) with no
    PAX/GNU long-name headers. The readable prefix keeps keys greppable; the hash keeps
    distinct uids apart: two uids get the same key only when their sanitised prefixes and
    64-bit hashes agree (negligible for natural data), or when a pool holds both an unsafe
    uid and, as another uid, that uid's derived key verbatim (emitters should check keys
    are unique within a shard).
    """
    if not isinstance(uid, str):
        raise TypeError(f"uid must be a str, got {type(uid).__name__}")
    if _SAFE_KEY.fullmatch(uid):
        return uid
    h = hashlib.sha256(uid.encode("utf-8")).hexdigest()[:16]
    prefix = _UNSAFE_CHAR.sub("_", uid[:40]) or "u"
    return f"{prefix}_{h}"


def wds_keys(uids: Any) -> list[str]:
    """:func:`wds_key` of every uid (same inputs as :func:`uid_keys`; nulls raise)."""
    return [wds_key(u) for u in _as_string_array(uids).to_pylist()]
