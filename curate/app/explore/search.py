"""Nearest neighbours for the explore app: by uid, by an image, by text.

The vectors are the run's kNN index (``curate index RUN``, :func:`curate.app.index.open_index`:
the image embeddings the run computed). A query image or text is embedded with **the run's
own model**: the score stage's section as recorded in run.json, loaded as the score stage
loads it (:func:`curate.stages.score._load`: a random-init model is seeded, so it is the very
model the run scored with), images through open_clip's preprocess
(:func:`curate.models.images.preprocess_images`), then :mod:`curate.models.encode`.

What can be asked depends on that model (:func:`model_status`):

- no score stage, or a pool that brought its embeddings or scores: there is no model, so only
  "more like this" from a pair of the run;
- random weights (``pretrained: none``): an image query works (the same random image tower
  embedded the run, so a copy of a pair finds it), a text query does not (a random text
  tower's vectors have no relation to the images');
- real weights: image and text.

A neighbour a safety rule dropped is never returned (:meth:`curate.app.explore.data.Store.visible`):
the index is asked for more until ``k`` visible pairs are found, and the ones skipped are
only counted.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from curate.core.rundir import step_info
from curate.errors import InputError

#: most neighbours one query may ask for
MAX_K = 1000


def model_status(store: Any, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"name", "image": bool, "text": bool, "why": str} of the model whose embeddings the
    index holds (``info``: the index's; its ``source.stage``), else of the last score stage."""
    source = ((info or {}).get("source") or {}).get("stage")
    scores = [r for r in store.refs if r.kind == "score"]
    ref = next((r for r in scores if r.name == source), None) if source else (
        scores[-1] if scores else None)
    if ref is None:
        return {"name": None, "image": False, "text": False,
                "why": "the index holds the pool's own image embeddings, so there is no model "
                       "to embed a query with: search by a pair's uid (more like this)"}
    sec = store.pipeline.section(ref.name)
    record = (store.manifest.get("stages") or {}).get(ref.name)
    info = step_info(record, "model")
    name = sec.model or sec.model_config_path or "ViT-B-32"
    if str(info.get("model", "")).startswith("none"):
        return {"name": name, "image": False, "text": False, "stage": ref.name,
                "why": f"{ref.name} used no model ({info['model']}): search by a pair's uid"}
    if info.get("random_init") or sec.pretrained.strip().lower() == "none":
        return {"name": f"{name} (pretrained: none)", "image": True, "text": False,
                "stage": ref.name,
                "why": f"{ref.name}'s model has random weights (pretrained: none): its text "
                       "tower's vectors mean nothing, so there is no text search; an image "
                       "query is embedded by the same random image tower as the run"}
    return {"name": f"{name} ({sec.pretrained})", "image": True, "text": True,
            "stage": ref.name, "why": ""}


class Searcher:
    """The index, the model (loaded on the first image or text query) and the safety filter."""

    def __init__(self, store: Any, index: Any) -> None:
        self.store = store
        self.index = index
        self.model = model_status(store, getattr(index, "info", None))
        self._loaded: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ queries
    def neighbors(self, uid: str, k: int) -> tuple[list[tuple[str, float]], int]:
        """The ``k`` nearest visible pairs to ``uid`` (itself excluded), best first, and how
        many nearer ones a safety rule withheld."""
        k = _k(k)
        vector = self.index.vector(uid)  # None: not indexed
        if self.store.lookup(uid, indexed=vector is not None) != "visible":
            raise LookupError(uid)
        if vector is None:
            held = (getattr(self.index, "info", None) or {}).get("pairs")
            why = ("the index holds the curated pairs only: `curate index RUN --pairs all` "
                   "indexes every pair with an embedding" if held == "kept" else
                   "the pair has no embedding: dropped before the score stage, or its image "
                   "failed")
            raise InputError(f"uid {uid}: not in the kNN index ({why})")
        return self._visible(lambda n: self.index.neighbors(uid, n), k)

    def by_vector(self, q: np.ndarray, k: int) -> tuple[list[tuple[str, float]], int]:
        q = np.asarray(q, np.float32).reshape(1, -1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        return self._visible(lambda n: self.index.search(q, n)[0], _k(k))

    def _visible(self, ask: Any, k: int) -> tuple[list[tuple[str, float]], int]:
        n = k + 16
        while True:
            got = list(ask(n))
            keep = self.store.visible([u for u, _ in got])
            shown = [(u, float(s)) for u, s in got if u in keep]
            if len(shown) >= k or len(got) < n or n >= 64 * k + 4096:
                # withheld: the hidden ones ranked before the last shown (all of them when
                # the index ran out before k were found)
                shown = shown[:k]
                cut = len(got)
                if len(shown) == k:
                    cut = next(i for i, (u, _) in enumerate(got) if u == shown[-1][0])
                withheld = sum(1 for u, _ in got[:cut] if u not in keep)
                return shown, withheld
            n *= 4

    # ------------------------------------------------------------------ embedding
    def embed_image(self, data: bytes) -> np.ndarray:
        if not self.model["image"]:
            raise InputError(f"image search: {self.model['why']}")
        from curate.models.encode import encode_images
        from curate.models.images import preprocess_images

        loaded = self._load()
        batch, ok, errors = preprocess_images([data], loaded.preprocess)
        if not len(ok):
            raise InputError(f"image: {errors[0]}")
        with self._lock:
            return encode_images(loaded, batch)[0]

    def embed_path(self, path: str) -> np.ndarray:
        p = Path(path).expanduser()
        try:
            data = p.read_bytes()
        except OSError as err:
            raise InputError(f"path {path}: {err.strerror}") from None
        return self.embed_image(data)

    def embed_text(self, text: str) -> np.ndarray:
        if not self.model["text"]:
            raise InputError(f"text search: {self.model['why']}")
        from curate.models.encode import encode_texts

        loaded = self._load()
        with self._lock:
            return encode_texts(loaded, [text])[0]

    def _load(self) -> Any:
        """The run's score model, once (torch takes seconds to import)."""
        with self._lock:
            if self._loaded is None:
                from curate.models.spec import ModelSpec
                from curate.stages.score import _load

                s = self.store.pipeline.section(self.model["stage"])
                model = s.model or (None if s.model_config_path else "ViT-B-32")
                self._loaded = _load(ModelSpec(model=model, pretrained=s.pretrained,
                                               model_config=s.model_config_path,
                                               device=s.device, precision=s.precision))
            return self._loaded


def _k(k: int) -> int:
    if not 1 <= int(k) <= MAX_K:
        raise InputError(f"k: {k} is not between 1 and {MAX_K}")
    return int(k)
