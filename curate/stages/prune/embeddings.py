"""What prune clusters: the image embeddings of the pairs that reach it, L2-normalised.

One reader for every step that needs them (the k-means sample, the assignment) and for the
planner's dedup model (``app/pilot_dedup``), so each reads exactly the rows prune read: the
pairs every earlier deciding stage kept, with the nearest earlier score stage's
``image_emb`` (else the pool's), less the uids of ``Where.drop``'s decisions (DBP's
re-clustering sees SemDeDup's survivors only).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.embeddings import as_matrix
from curate.core.rundir import RunDir
from curate.errors import InputError
from curate.stages.prune.buckets import read_decisions
from curate.stages.prune.clustering import Where


def load_embeddings(w: Where, shard: str) -> tuple[pa.Array, np.ndarray]:
    """uids and float32 L2-normalised image embeddings of the pairs reaching prune (less
    the uids of ``w.drop``'s decisions: DBP's re-clustering sees SemDeDup's survivors)."""
    rd = RunDir(w.run_url)
    surv = rd.survivors(list(w.deciding), shard, ["uid"] if w.scores else None)
    uids = surv["uid"].combine_chunks()
    if w.scores:
        s = rd.read(w.scores, shard, ["uid", "image_emb"])
        idx = pc.index_in(uids, value_set=s["uid"].combine_chunks())
        col = pc.take(s["image_emb"].combine_chunks(), idx)
    elif "image_emb" in surv.column_names:
        col = surv["image_emb"].combine_chunks()
    else:
        raise InputError("prune: needs image embeddings: run the score stage before it, or "
                         "bring an image_emb column in the pool (pool.columns.image_emb)")
    if col.null_count:
        raise InputError(f"prune: {shard}: {col.null_count} pairs have no image embedding")
    x = as_matrix(col)
    if w.drop:
        gone = read_decisions(rd, w.drop, shard)
        if gone is not None and gone.num_rows:
            keep = pc.invert(pc.is_in(uids, value_set=gone["uid"].combine_chunks()))
            uids, x = uids.filter(keep), x[keep.to_numpy(zero_copy_only=False)]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return uids, x / np.where(norms == 0, 1, norms)
