"""Builders the tests share: pools with embeddings, vocabularies, the tiny open_clip config,
reading a stage's shards back. Imported as ``from helpers import ...`` (tests/ is on the
path through conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ["dog", "cat", "tree", "house", "sky", "beach", "kite", "red", "blue", "car"]

#: a tiny open_clip model (random init): fast on CPU, real code paths
TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                       "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1}}


def write_tiny_config(folder: Path, name: str = "tiny-test.json") -> str:
    path = Path(folder) / name
    path.write_text(json.dumps(TINY))
    return str(path)


def write_vocab(folder: Path, words: list[str] = WORDS) -> str:
    path = Path(folder) / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return str(path)


def embedding_pool(path: Path, n: int, d: int = 8, seed: int = 0, start: int = 0,
                   uids: list[str] | None = None, text: bool = True) -> str:
    """Captions from WORDS plus clustered, normalisable image (and text) embeddings."""
    rng = np.random.default_rng(seed)
    caps = [" ".join(rng.choice(WORDS, 3, p=np.r_[[0.4, 0.2], [0.05] * 8])) + f" #{start + i}"
            for i in range(n)]
    centers = np.eye(d, dtype=np.float32)
    x = centers[rng.integers(0, 4, n) % d] + 0.05 * rng.normal(size=(n, d)).astype(np.float32)
    cols = {"caption": caps,
            "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)}
    if text:
        t = x + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
        cols["text_emb"] = pa.FixedSizeListArray.from_arrays(pa.array(t.reshape(-1)), d)
    if uids is not None:
        cols = {"uid": uids, **cols}
    pq.write_table(pa.table(cols), str(path))
    return str(path)


def read_parts(folder: Path) -> pa.Table:
    """Every ``part-*.parquet`` of a stage folder, in shard order."""
    return pa.concat_tables([pq.read_table(p) for p in sorted(Path(folder)
                                                               .glob("part-*.parquet"))])


# ----------------------------------------------------------------------------- ingest only
POOL_URL = "http://example.com/x.jpg"


def write_columns(path, n: int | None = None, **cols) -> str:
    """A pool file; url and caption are filled in (distinct per row) when not given."""
    n = n if n is not None else len(next(iter(cols.values())))
    cols.setdefault("url", [f"{POOL_URL}?{i}" for i in range(n)])
    cols.setdefault("caption", [f"caption {i}" for i in range(n)])
    pq.write_table(pa.table(cols), str(path))
    return str(path)


def ingest_into(tmp_path, spec, manifest: dict | None = None, **pool):
    """Ingest ``spec`` into ``tmp_path/run`` with ``PoolConfig(**pool)``, without a pipeline."""
    from curate.config import PoolConfig
    from curate.core.rundir import RunDir
    from curate.stages.ingest import ingest

    rd = RunDir(str(tmp_path / "run"))
    manifest = {} if manifest is None else manifest
    ingest(rd, str(spec), PoolConfig(**pool), manifest)
    return rd, manifest


def pool_table(rd) -> pa.Table:
    """Every pool shard of a run directory, in shard order."""
    return pa.concat_tables([rd.read("pool", s) for s in rd.pool_shards()])


# ------------------------------------------------------------ small builders and readers
def curated(run: Path) -> pa.Table:
    """A run's curated parquet shards (``RUN/curated/part-*.parquet``), in shard order."""
    return read_parts(Path(run) / "curated")


def free_port() -> int:
    """A loopback port free right now (for a server the code under test starts itself)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hex_uids(n: int, seed: int = 0) -> list[str]:
    """``n`` random 32-hex-digit uids (the shape ingest derives), reproducible by seed."""
    raw = np.random.default_rng(seed).integers(0, 2**63, size=(n, 2), dtype=np.int64)
    return [f"{a:016x}{b:016x}" for a, b in raw.tolist()]


def uid_key_oracle(uid: str) -> int:
    """The 64-bit sort key of a uid, written from the contract (not from curate): its first
    16 hex digits when it starts with them, else the first 8 bytes of its SHA-256."""
    import hashlib
    import re

    head = uid[:16]
    if len(head) == 16 and re.fullmatch(r"[0-9a-fA-F]{16}", head):
        return int(head, 16)
    return int.from_bytes(hashlib.sha256(uid.encode("utf-8")).digest()[:8], "big")


def unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (embeddings as the stages store them)."""
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def fsl(x: np.ndarray) -> pa.FixedSizeListArray:
    """A (n, d) array as the fixed-size-list float32 column embeddings are stored in."""
    x = np.ascontiguousarray(x, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def photo(seed: int, size=(160, 120)):
    """A smooth random 'photo': blurred coloured shapes on a gradient (distinct per seed)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    w, h = size
    grad = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3)[None, None, :]
    base = np.broadcast_to(grad, (h, w, 3)).astype(np.uint8)
    img = Image.fromarray(base.copy())
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        box = [int(x0), int(y0), int(x0 + rng.integers(15, w // 2)),
               int(y0 + rng.integers(15, h // 2))]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    return img.filter(ImageFilter.GaussianBlur(2))


def encode_image(img, fmt: str = "PNG", **kw) -> bytes:
    """A Pillow image as the bytes of a file of format ``fmt`` (save options in ``kw``)."""
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()

