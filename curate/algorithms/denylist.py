"""Which pairs a denylist or takedown rule set matches (pure Arrow/NumPy).

Rule kinds: ``uid`` (exact), ``url`` (exact), ``domain`` (the URL's host is the domain or a
subdomain of it: ``example.com`` matches ``cdn.example.com``, not ``badexample.com``),
``sha256``, ``md5``, ``sha1`` (hex of the image bytes as stored: the forms hash lists of
child-safety organisations are shared in; case-insensitive), ``phash`` (16 hex digits:
imagehash's 64-bit phash; matches within ``radius`` bits), ``pdq`` (64 hex digits: Meta's
PDQ as ThreatExchange writes it; matches within ``pdq_distance`` of 256 bits, the nearest
listed hash), and, for the download stage's configured denylists only, ``url_pattern`` (a
regular expression in RE2 syntax, searched anywhere in the URL). Rules are a table
``kind, value``; a pair matches its first rule in the order of :data:`ALL_KINDS`, and the
label says which (``domain:example.com``, ``md5:<hex>``, ``pdq:<listed hex>``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("uid", "url", "domain", "sha256", "md5", "sha1", "phash", "pdq")
#: kinds ``match`` also understands; not offered by ``curate takedown`` (a takedown names
#: what it removes, a pattern is a crawl policy)
ALL_KINDS = ("uid", "url", "url_pattern", "domain", "sha256", "md5", "sha1", "phash", "pdq")
#: kinds matched on the image (its bytes or pixels): known only after the fetch
IMAGE_KINDS = ("sha256", "md5", "sha1", "phash", "pdq")
#: hex digits of a value of each hash kind
HEX_DIGITS = {"sha256": 64, "md5": 32, "sha1": 40, "phash": 16, "pdq": 64}
#: PDQ's default match distance (ThreatExchange's recommended threshold, of 256 bits)
PDQ_DISTANCE = 31
#: a host has at most this many labels removed when looking for a listed parent domain
MAX_LABELS = 12


def hosts(urls: pa.Array) -> pa.Array:
    """Lower-cased host of each URL (empty when there is none)."""
    m = pc.extract_regex(pc.fill_null(urls, ""), r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?"
                         r"(?:[^/@]*@)?(?P<host>[^/:?#]*)")
    return pc.utf8_lower(pc.fill_null(pc.struct_field(m, "host"), ""))


def _values(rules: pa.Table, kind: str) -> pa.Array:
    return rules.filter(pc.equal(rules["kind"], kind))["value"].combine_chunks()


def match(rules: pa.Table, uids: pa.Array, urls: pa.Array | None = None,
          sha256: pa.Array | None = None, phash: np.ndarray | None = None,
          radius: int = 4, md5: pa.Array | None = None, sha1: pa.Array | None = None,
          pdq: tuple[np.ndarray, np.ndarray] | None = None,
          pdq_distance: int = PDQ_DISTANCE) -> pa.Array:
    """Per pair: the label of the first rule it matches (``kind:value``), null if none.
    ``phash``: uint64 per pair (0 where unknown, then never matched). ``sha256``, ``md5``,
    ``sha1``: hex per pair (null: unknown). ``pdq``: ((n, 4) uint64 hashes, (n,) bool
    known)."""
    n = len(uids)
    label = pa.nulls(n, pa.string())

    def put(mask: pa.Array, text: pa.Array) -> None:
        nonlocal label
        label = pc.if_else(pc.and_(pc.fill_null(mask, False), pc.is_null(label)), text, label)

    for kind, col in (("uid", uids), ("url", urls)):
        vals = _values(rules, kind)
        if col is not None and len(vals):
            put(pc.is_in(col, value_set=vals), pc.binary_join_element_wise(kind, col, ":"))
    if urls is not None:
        for pattern in _values(rules, "url_pattern").to_pylist():
            put(pc.match_substring_regex(urls, pattern),
                pa.array([f"url_pattern:{pattern}"] * n, pa.string()))
    vals = pc.utf8_lower(_values(rules, "domain"))
    if urls is not None and len(vals):
        h = hosts(urls)
        for k in range(MAX_LABELS):  # the host, then without its first label, ...
            parent = pc.replace_substring_regex(h, rf"^([^.]*\.){{{k}}}", "") if k else h
            put(pc.and_(pc.is_in(parent, value_set=vals), pc.not_equal(parent, "")),
                pc.binary_join_element_wise("domain", parent, ":"))
    for kind, col in (("sha256", sha256), ("md5", md5), ("sha1", sha1)):
        vals = pc.utf8_lower(_values(rules, kind))
        if col is not None and len(vals):
            s = pc.utf8_lower(col)
            put(pc.is_in(s, value_set=vals), pc.binary_join_element_wise(kind, s, ":"))
    vals = _values(rules, "phash").to_pylist()
    if phash is not None and vals:
        from curate.algorithms.contamination import near_any

        listed = np.array([int(v, 16) for v in vals], np.uint64)
        known = np.flatnonzero(phash != 0)
        hit, which = near_any(phash[known], listed, radius)
        mask = np.zeros(n, bool)
        mask[known[hit]] = True
        text = np.full(n, "", object)
        text[known[hit]] = [f"phash:{vals[i]}" for i in which[hit]]
        put(pa.array(mask), pa.array(text.tolist(), pa.string()))
    vals = _values(rules, "pdq").to_pylist()
    if pdq is not None and vals:
        put(*_pdq_hits(pdq, vals, pdq_distance))
    return label


def _pdq_hits(pdq: tuple[np.ndarray, np.ndarray], vals: list[str], distance: int
              ) -> tuple[pa.Array, pa.Array]:
    """(mask, ``pdq:<listed hex>`` label) of the pairs within ``distance`` of a listed
    PDQ hash (the nearest one names the rule)."""
    from curate.algorithms.pdq_match import nearest

    hashes, known = pdq
    listed = np.frombuffer(b"".join(bytes.fromhex(v) for v in vals), ">u8"
                           ).astype(np.uint64).reshape(-1, 4)
    rows = np.flatnonzero(known)
    which, _ = nearest(hashes[rows], listed, distance)
    n = len(known)
    mask = np.zeros(n, bool)
    text = np.full(n, "", object)
    hit = which >= 0
    mask[rows[hit]] = True
    text[rows[hit]] = [f"pdq:{vals[i]}" for i in which[hit]]
    return pa.array(mask), pa.array(text.tolist(), pa.string())
