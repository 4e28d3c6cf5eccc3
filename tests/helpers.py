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
