"""Uid keys, splitmix64 and WebDataset keys (curate.algorithms.uids) against oracles
written in the tests: int(uid[:16], 16) or hashlib (helpers.uid_key_oracle), and a pure-Python
splitmix64."""

from __future__ import annotations

import hashlib
import io
import re
import string
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from helpers import hex_uids, uid_key_oracle

from curate.algorithms import uids as U

M64 = (1 << 64) - 1

#: uid shapes a pool may bring (every one is legal)
SHAPES = [
    "0123456789abcdef0123456789abcdef",  # curate's own: 32 hex
    "ABCDEF0123456789",  # exactly 16 hex, upper case
    "0123456789abcdeF" + "zz",  # hex head, junk tail
    "0123456789abcdeg",  # 16 chars, last one not hex
    "0123456789abcde",  # 15 hex
    "000012345",  # numeric
    "img-000001",
    "img_000001.jpg",
    "a.b.c",
    ".hidden",
    "dir/sub/file",
    "/abs",
    "..",
    ".",
    "../../etc/passwd",
    "héllo wörld",
    "中文标识",
    "emoji-\U0001f600",
    "with space",
    " lead",
    "tab\tnew\nline",
    "x" * 200,
    "é" * 20,
    "a" * 64,
    "a" * 65,
    "-",
    "_",
    "",
]


def mix_ref(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def splitmix_ref(x: int) -> int:
    return mix_ref((x + 0x9E3779B97F4A7C15) % 2**64)


def random_strings(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list(string.printable) + list("./..//") + ["é", "中", "\U0001f600", "ß", " "]
    out = []
    for length in rng.integers(0, 120, size=n).tolist():
        out.append("".join(rng.choice(alphabet, size=length).tolist()))
    return out


# --------------------------------------------------------------------------- mixing


def test_splitmix64_matches_pure_python_reference():
    xs = [0, 1, 2, 0x9E3779B97F4A7C15, M64, M64 - 1, 1 << 63, 12345678901234567]
    xs += np.random.default_rng(0).integers(0, 2**63, size=200).tolist()
    got = U.splitmix64(np.array(xs, dtype=np.uint64))
    assert got.dtype == np.uint64
    assert got.tolist() == [splitmix_ref(x) for x in xs]
    assert U.mix64(np.array(xs, dtype=np.uint64)).tolist() == [mix_ref(x) for x in xs]
    assert [U.splitmix64_int(x) for x in xs] == [splitmix_ref(x) for x in xs]
    assert [U.mix64_int(x) for x in xs] == [mix_ref(x) for x in xs]
    # the reference generator's first output from state 0
    assert splitmix_ref(0) == 0xE220A8397B1DCDAF


# --------------------------------------------------------------------------- uid keys


def test_hex_fast_path_equals_int_of_first_16():
    uids = hex_uids(5000) + [u.upper() for u in hex_uids(100, seed=1)] + ["f" * 16, "0" * 16]
    keys = U.uid_keys(pa.array(uids))
    assert keys.dtype == np.uint64
    assert keys.tolist() == [int(u[:16], 16) for u in uids]
    assert [U.uid_key(u) for u in uids] == [int(u[:16], 16) for u in uids]


def test_non_hex_uids_use_sha256_prefix():
    uids = [u for u in SHAPES if not re.match(r"[0-9a-fA-F]{16}", u)]
    expected = [int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big") for u in uids]
    assert U.uid_keys(uids).tolist() == expected
    assert [U.uid_key(u) for u in uids] == expected
    assert U.uid_key("") == int.from_bytes(hashlib.sha256(b"").digest()[:8], "big")


def test_mixed_arrays_and_input_types():
    uids = hex_uids(300) + SHAPES + random_strings(300, seed=3)
    perm = np.random.default_rng(1).permutation(len(uids))
    uids = [uids[i] for i in perm]
    expected = [uid_key_oracle(u) for u in uids]
    arr = pa.array(uids)
    assert U.uid_keys(arr).tolist() == expected
    assert U.uid_keys(uids).tolist() == expected
    assert U.uid_keys(np.array(uids, dtype=object)).tolist() == expected
    assert U.uid_keys(arr.cast(pa.large_string())).tolist() == expected
    assert U.uid_keys(arr.dictionary_encode()).tolist() == expected
    assert U.uid_keys(arr.slice(7, 100)).tolist() == expected[7:107]
    chunked = pa.chunked_array([arr.slice(0, 5), arr.slice(5, 0), arr.slice(5)])
    assert U.uid_keys(chunked).tolist() == expected
    # NumPy fixed-width arrays (no trailing NULs in the uids: NumPy would strip them)
    no_nul = [u for u in uids if not u.endswith("\x00")]
    assert U.uid_keys(np.array(no_nul)).tolist() == [uid_key_oracle(u) for u in no_nul]
    ascii_ = [u for u in no_nul if u.isascii()]
    as_bytes = np.array([u.encode() for u in ascii_])
    assert as_bytes.dtype.kind == "S"
    assert U.uid_keys(as_bytes).tolist() == [uid_key_oracle(u) for u in ascii_]
    assert U.uid_keys(pa.array([u.encode() for u in uids], pa.binary())).tolist() == expected


def test_uid_keys_empty_and_nulls():
    assert U.uid_keys([]).shape == (0,)
    assert U.uid_keys(pa.chunked_array([], pa.string())).dtype == np.uint64
    with pytest.raises(ValueError, match="null"):
        U.uid_keys(pa.array(["a", None]))
    with pytest.raises(ValueError, match="null"):
        U.uid_keys(["0123456789abcdef", None])
    with pytest.raises(TypeError):
        U.uid_keys(np.array([1, 2]))


# --------------------------------------------------------------------------- WebDataset keys


def check_key(key: str) -> None:
    assert 1 <= len(key) <= 64
    assert re.fullmatch(r"[A-Za-z0-9_-]+", key)
    assert "/" not in key and "." not in key and not key.startswith(".")
    assert len(f"{key}.json".encode()) <= 100  # a USTAR name, no long-name extension


def test_safe_uids_are_their_own_key():
    for uid in ["0123456789abcdef0123456789abcdef", "000012345", "img-000001", "a" * 64,
                "-", "_", "A_b-9"]:
        assert U.wds_key(uid) == uid


def test_unsafe_uids_get_prefix_and_hash():
    for uid in ["img_000001.jpg", "a" * 65, "", "..", "dir/sub/file", "héllo wörld"]:
        h = hashlib.sha256(uid.encode("utf-8")).hexdigest()[:16]
        prefix = "".join(c if re.fullmatch(r"[A-Za-z0-9_-]", c) else "_" for c in uid)[:40]
        assert U.wds_key(uid) == f"{prefix or 'u'}_{h}"
    assert U.wds_key("") == "u_" + hashlib.sha256(b"").hexdigest()[:16]


def test_wds_key_properties_over_shapes_and_random_strings():
    uids = list(dict.fromkeys(SHAPES + random_strings(10_000, seed=7) + hex_uids(100)))
    keys = U.wds_keys(uids)
    assert keys == [U.wds_key(u) for u in uids]
    for key in keys:
        check_key(key)
    assert len(set(keys)) == len(uids)  # distinct uids, distinct keys
    assert U.wds_keys(pa.chunked_array([pa.array(uids[:10]), pa.array(uids[10:20])])) \
        == keys[:20]
    with pytest.raises(ValueError, match="null"):
        U.wds_keys(pa.array(["a", None]))


def test_wds_keys_round_trip_through_a_ustar_tar():
    uids = SHAPES + random_strings(200, seed=11)
    uids = list(dict.fromkeys(uids))
    keys = U.wds_keys(uids)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, uid in zip(keys, uids):
            for ext, payload in (("txt", uid.encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r") as tar:
        members = tar.getmembers()
        got = {}
        for m in members:
            key, ext = m.name.split(".", 1)  # webdataset's rule: key up to the first dot
            assert "/" not in m.name
            if ext == "txt":
                got[key] = tar.extractfile(m).read().decode()
    assert len(members) == 2 * len(uids)
    assert got == dict(zip(keys, uids))
