"""Thumbnails for the explore app: the report's rules, served as JPEG files.

The image is the download stage's stored bytes (``images/``), else the pool's own ``image``
column. What a thumbnail may show is decided exactly as on the report and the audit page
(:class:`curate.stages._report_safety.SafetyView`, :func:`curate.media.thumbs.thumbnail_jpeg`):

- a pair a safety rule dropped has **no** thumbnail (``hide``: the request is answered 404,
  and the app never links one: such a pair is not a row of the ``explore`` view either);
- a pair whose punsafe is above 0.5, or that no nsfw stage scored in a run with one, is
  **blurred** unless the app was started with ``--show-sensitive``;
- faces (a faces stage's boxes, or the pool's ``face_bboxes``) are blurred at full size
  first, whatever ``--show-sensitive`` says.

A grid asks for its thumbnails at once (:meth:`Thumbs.prepare`): the uids are grouped by pool
shard and each shard's images are read once; the JPEGs are kept in a small LRU cache, so the
browser's ``/thumb/<uid>`` requests that follow are answered from memory. Reading one image
reads its shard's image column (Parquet has no cheaper random access): a grid over many
large shards is slower than one over few.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import pyarrow.parquet as pq

from curate.media.thumbs import thumbnail_jpeg
from curate.stages._report_safety import SafetyView

SIZE = 200
CACHE = 4096


class Thumbs:
    """uid -> (JPEG bytes or None, blurred?) under the run's safety rules."""

    def __init__(self, store: Any, show_sensitive: bool) -> None:
        self.store = store
        self.rd = store.rd
        self.view = SafetyView.of(store.pipeline, store.refs, show_sensitive)
        dl = next((r for r in store.refs if r.kind == "download" and r.view in store.views),
                  None)
        if dl is not None and "image" in store.view_columns(dl.view):
            self.source: str | None = dl.folder
        elif "image" in store.view_columns("pool"):
            self.source = "pool"
        else:
            self.source = None
        self._cache: OrderedDict[str, tuple[bytes | None, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(self, uids: list[str]) -> dict[str, tuple[bytes | None, bool]]:
        """Make (or find) the thumbnails of ``uids``; the visible ones only."""
        with self._lock:
            have = {u: self._cache[u] for u in uids if u in self._cache}
        todo = [u for u in dict.fromkeys(uids) if u not in have]
        if todo and self.source is not None:
            todo = sorted(self.store.visible(todo))  # a withheld pair: no picture, ever
            by_shard: dict[str, list[str]] = {}
            for u, shard in self.store.shards_of(todo).items():
                by_shard.setdefault(shard, []).append(u)
            for shard, us in sorted(by_shard.items()):
                have.update(self._shard(shard, us))
        elif todo:
            have.update(dict.fromkeys(todo, (None, False)))
        with self._lock:
            for u, v in have.items():
                self._cache[u] = v
                self._cache.move_to_end(u)
            while len(self._cache) > CACHE:
                self._cache.popitem(last=False)
        return have

    def get(self, uid: str) -> tuple[bytes | None, bool]:
        return self.prepare([uid]).get(uid, (None, False))

    def _shard(self, shard: str, uids: list[str]) -> dict[str, tuple[bytes | None, bool]]:
        verdict = self.view.verdicts(self.rd, shard, uids)
        show = [u for u in uids if verdict.get(u) != "hide"]
        out: dict[str, tuple[bytes | None, bool]] = dict.fromkeys(uids, (None, False))
        path = self.rd.shard_path(self.source, shard)
        if not show or not self.rd.fs.exists(path):
            return out
        faces = self.view.face_boxes(self.rd, shard, show)
        with self.rd.fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["uid", "image"], filters=[("uid", "in", show)])
        for u, data in zip(t["uid"].to_pylist(), t["image"].to_pylist()):
            blur = verdict.get(u) == "blur"
            out[u] = (thumbnail_jpeg(data, SIZE, blur=blur, faces=faces.get(u)), blur)
        return out
