"""MetaCLIP's own vocabulary: download v1's metadata.json and verify it by its git blob id.

Apart from building (:mod:`curate.vocab.build`) because it is the one part of the vocabulary
code that needs the network, and its check is exact: the bytes must be the committed file.
MetaCLIP's metadata is CC BY-NC 4.0 (non-commercial).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from curate.errors import InputError

logger = logging.getLogger(__name__)

METACLIP_URL = (
    "https://raw.githubusercontent.com/facebookresearch/MetaCLIP/main/"
    "metaclip/metaclip1/metadata.json"
)
#: Git blob id of MetaCLIP v1's metadata.json (500k entries, CC BY-NC 4.0).
METACLIP_BLOB_ID = "2691a90d6690440916c87348d2b9548157570a2c"


def git_blob_id(data: bytes) -> str:
    """Git's object id of a file's bytes: sha1(b"blob <len>\\0" + data)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
        return response.read()


def fetch_metaclip(out_path: str | os.PathLike, url: str = METACLIP_URL,
                   timeout: float = 60.0) -> Path:
    """Download MetaCLIP v1's metadata.json, check its git blob id, write it to out_path.

    Needs internet; raises InputError with one line when the download fails or the bytes
    are not the expected file. MetaCLIP's metadata is CC BY-NC 4.0 (non-commercial).
    """
    try:
        data = _download(url, timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(f"cannot download MetaCLIP metadata from {url}: {reason} (offline? "
                         f"download metadata.json elsewhere and pass its path)") from e
    blob = git_blob_id(data)
    if blob != METACLIP_BLOB_ID:
        raise InputError(f"{url}: git blob id {blob} != expected {METACLIP_BLOB_ID} "
                         f"({len(data)} bytes): not MetaCLIP's metadata.json")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    logger.info("wrote MetaCLIP metadata (%d bytes) to %s", len(data), out)
    return out
