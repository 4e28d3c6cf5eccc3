"""decontaminate: re-encoded and resized copies of eval images are dropped, with the set's
name; embeddings close to an eval embedding too; the rest of the pool stays.

The reference is written here: imagehash.phash Hamming distance <= radius to any eval image,
or cosine similarity >= threshold between L2-normalised embeddings.
"""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import base_config
from helpers import encode_image, fsl, photo, read_parts
from PIL import Image

from curate.core.rundir import step_info
from curate.driver import run_pipeline

D = 16


def _emb(rng, n):
    return rng.normal(size=(n, D)).astype(np.float32)


def test_copies_of_eval_images_are_dropped(tmp_path, ray_session):
    rng = np.random.default_rng(0)
    evals = [photo(500 + i) for i in range(5)]
    ev_x = _emb(rng, 5)
    pq.write_table(pa.table({"image": pa.array([encode_image(im) for im in evals], pa.binary()),
                             "image_emb": fsl(ev_x)}), tmp_path / "imagenet_val.parquet")
    rows, xs = [], []
    for i in range(20):  # unrelated photos, unrelated embeddings
        rows.append((f"photo {i}", encode_image(photo(i))))
        xs.append(_emb(rng, 1)[0])
    rows += [("eval0 as jpeg", encode_image(evals[0], "JPEG", quality=60)),
             ("eval1 resized", encode_image(evals[1].resize((80, 60)))),
             ("eval2 cropped", encode_image(evals[2].crop((2, 2, 158, 118))))]
    xs += [_emb(rng, 1)[0] for _ in range(3)]
    rows.append(("eval3 by embedding only", encode_image(photo(900))))
    xs.append(ev_x[3] + 0.05 * _emb(rng, 1)[0])
    x = np.stack(xs)
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://h{i}.example.com/{i}.png" for i in range(len(rows))],
                             "caption": [c for c, _ in rows],
                             "image": pa.array([b for _, b in rows], pa.binary()),
                             "image_emb": fsl(x)}), pool)
    cfg = base_config(stages=["decontaminate", "report"], pool={"shard_size": 7},
                      decontaminate={"eval_sets": {"imagenet_val": str(tmp_path /
                                                                       "imagenet_val.parquet")},
                                     "radius": 8, "threshold": 0.9})
    m = run_pipeline(cfg, str(tmp_path / "run"), pool=str(pool))
    out = read_parts(tmp_path / "run" / "decontaminate")
    poolt = read_parts(tmp_path / "run" / "pool")
    cap = dict(zip(poolt["uid"].to_pylist(), poolt["caption"].to_pylist()))
    got = {cap[u]: d for u, k, d in zip(out["uid"].to_pylist(), out["kept"].to_pylist(),
                                       out["detail"].to_pylist()) if not k}
    # reference
    eh = [imagehash.phash(im.convert("RGB")) for im in evals]
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    sims = unit(x) @ unit(ev_x).T
    want = set()
    for i, (c, b) in enumerate(rows):
        ph = imagehash.phash(Image.open(io.BytesIO(b)).convert("RGB"))
        if min(ph - e for e in eh) <= 8 or sims[i].max() >= 0.9:
            want.add(c)
    assert set(got) == want
    assert want == {"eval0 as jpeg", "eval1 resized", "eval2 cropped", "eval3 by embedding only"}
    assert got["eval1 resized"] == "imagenet_val:1 phash"
    assert got["eval3 by embedding only"].startswith("imagenet_val:3 emb=")
    st = m["stages"]["decontaminate"]
    assert st["dropped"] == {"eval_contamination": 4}
    assert step_info(st, "hits")["hits"] == {"imagenet_val": 4}
    page = (tmp_path / "run" / "reports" / "report.html").read_text(encoding="utf-8")
    sheets = page.split('<section id="contact-sheets">', 1)[1].split("</section>", 1)[0]
    assert "<td>decontaminate</td><td>imagenet_val</td><td class=\"num\">4</td>" in sheets
    assert "eval_contamination" in sheets
