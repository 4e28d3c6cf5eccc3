"""Nearest-neighbour indices over L2-normalised embeddings (inner product = cosine): which
FAISS index fits n vectors of d dimensions in a memory budget, trained on a sample, filled
in parts, merged, tuned for recall, searched. NumPy in and out; no files, no Ray
(:mod:`curate.app.index` reads the run and runs the parts as engine tasks).

The choice follows autofaiss 2.18.0 (criteo/autofaiss, the library clip-retrieval built
LAION-5B's indices with), read from its source:

- the budget string: ``utils/cast.py`` ``cast_memory_to_bytes`` (B, K, M, G, T with or
  without a trailing B, powers of 1024);
- the lists: ``external/optimize.py`` ``get_optimal_nb_clusters``, first value:
  ``2**round(log2(4 sqrt(n)))`` below 1M vectors, 16,384 below 10M, 65,536 below 300M,
  131,072 beyond;
- past the small cases, an unquantised IVF when it fits the budget
  (``get_optimal_index_keys_v2``), else ``get_optimal_quantization``: the largest PQ code of
  256, 128, 64, 48, 32, 24, 16, 8, 4 bytes (below d) whose ``n (m + 8)`` bytes fit the
  budget, with an HNSW32 coarse quantiser from 1,000 lists on (``IVF{nlist}_HNSW32``);
- the size estimate: ``external/metadata.py`` ``IndexMetadata.estimated_index_size_in_bytes``
  (codes + 8-byte ids, centroids, the quantiser's HNSW links, the direct map);
- the training sample: ``get_optimal_train_size``, 100 points per list (at most n);
- search settings: ``efSearch = 2 nprobe`` for the HNSW quantiser (``get_optimal_hyperparameters``);
- inner product on the vectors as given (clip-retrieval normalises them first; so do we).

Where curate departs, and why:

- **No HNSW index** (autofaiss: ``HNSW15`` for 1k-10k vectors, ``HNSW{m}`` whenever the graph
  fits the budget): a graph cannot be built in parts on several machines and merged, and
  curate fills the index per shard. Below 10,000 vectors (autofaiss's quantisation threshold)
  the index is ``Flat`` (exact; a query scans 10k rows in well under a millisecond); above,
  where autofaiss would take a graph, an ``IVF{nlist},Flat`` (same budget test) instead.
  autofaiss also limits IVF-Flat to fewer than 1M vectors (beyond, its graph wins); with no
  graph we take IVF-Flat at any size that fits.
- **No OPQ rotation** (autofaiss: ``OPQ{m}_{y},IVF…,PQ{m}x8``): in ``bench/bench_index.py``
  (100k x 512, 12MB, both PQ64) autofaiss's build, OPQ training and its search for nprobe,
  took 9-20x ours for half a point more recall@10; without it ``m`` must divide d, so 48
  and 24 are skipped where they do not. ``kind=`` takes an OPQ key when wanted.
- **8-bit scalar codes before PQ** (autofaiss goes from an unquantised index straight to
  PQ): ``{coarse},SQ8`` when its ``n (d + 16)`` bytes fit, a quarter of IVF-Flat's memory
  and no codebook to train. On the bench (50k x 128 in 8MB) it gave recall@10 0.97 where
  autofaiss's PQ in the same budget gave 0.90; on 50k x 64 the largest PQ that fitted
  (``PQ32x8``) stopped at 0.93 however many lists were probed, SQ8 reached 0.99.
- **9- and 10-bit PQ codes too** (autofaiss: 8 bits a sub-code only): where the training
  sample holds 64 points for each of the 2^bits sub-centroids, the finest code that fits is
  chosen among ``PQ{m}x8``, ``x9`` and ``x10`` by bits a vector, so a budget between two
  8-bit sizes buys wider codes instead of falling to the smaller. On the bench (100k x 512
  in 12MB) ``PQ64x9`` gave recall@10 0.760 where ``PQ64x8`` gave 0.744 (autofaiss, with its
  OPQ rotation and every list probed: 0.748); 18 s of training instead of 12.6 (autofaiss's
  whole build: 320 s; an OPQ rotation on the 8-bit codes took 720 s here for +0.002).
- **The PQ codebooks are counted** in the size estimate (autofaiss leaves them out):
  ``4 d 2^bits`` bytes, 0.5 MB at 512 dims and 8 bits, 2 MB at 10 bits.
- **PQ codebooks on 64 points a code** (FAISS's default: 256): 4.5x faster to train, recall
  within 0.3 points (50k x 64, PQ32); and no polysemous training (``index_factory`` turns it
  on for IVF-PQ keys, 20x the training time; autofaiss builds its IVF-PQ without it).
- **nprobe is tuned for recall, not speed**: autofaiss picks the largest nprobe under a
  10 ms query budget; here the smallest power of two whose recall@10 on held-out vectors
  (against exact search) reaches ``target`` (0.95), or the first doubling that gained less
  than half a point (the codes, not the lists, bound the recall).

recall@10 here is the share of a query's true 10 nearest others (exact inner product, its
own row left out) among the 10 the index returns (10-recall@10); 1-recall@10, the PQ
literature's recall@10, is how often the true nearest one is among them.
- **A direct map always** (autofaiss: ``make_direct_map`` off by default): 8 bytes a vector,
  counted in the estimate, so a pair's own vector can be read back (neighbours by uid).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

#: below this many vectors the index is exact (autofaiss's quantisation threshold)
FLAT_THRESHOLD = 10_000
#: autofaiss's PQ code sizes, largest first
PQ_BYTES = (256, 128, 64, 48, 32, 24, 16, 8, 4)
#: nlist from which the coarse quantiser is an HNSW graph (autofaiss)
HNSW_COARSE_FROM = 1000
HNSW_M = 32
TRAIN_PER_LIST = 100
#: bits a PQ sub-code may have; beyond 8 only with PQ_POINTS_PER_CODE training points each
PQ_BITS = (8, 9, 10)
PQ_POINTS_PER_CODE = 64
_KEY = re.compile(r"^(?:OPQ(\d+)(?:_(\d+))?,)?IVF(\d+)(?:_HNSW(\d+))?,"
                  r"(Flat|SQ8|PQ(\d+)(?:x(\d+))?)$")
_UNITS = {u: 1024 ** i for i, u in enumerate("BKMGTPEZ")}


def parse_memory(text: str | int) -> int:
    """'4GB', '512M', '1.5G', '4GiB' or a number of bytes -> bytes (powers of 1024, as
    autofaiss's ``cast_memory_to_bytes``); ValueError on anything else."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(?:([KMGTPEZ])(?:i?B)?|B)?", str(text).strip(), re.I)
    if not m:
        raise ValueError(f"not a memory size: {text!r} (e.g. 4GB, 512MB, 1.5G)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])


def nb_clusters(n: int) -> int:
    """autofaiss's first choice of the number of IVF lists for n vectors."""
    if n < 1_000_000:
        return max(1, int(2 ** round(math.log2(4 * math.sqrt(max(n, 1))))))
    if n < 10_000_000:
        return 16_384
    if n < 300_000_000:
        return 65_536
    return 2 ** 17


def describe(key: str) -> dict[str, int | str]:
    """What a key holds: ``{"type": flat|ivf_flat|ivf_pq, "nlist", "hnsw", "pq", "nbits",
    "opq"}``; ValueError for a key this module cannot build in parts."""
    if key == "Flat":
        return {"type": "flat"}
    m = _KEY.match(key)
    if not m:
        raise ValueError(f"index kind {key!r}: expected Flat, IVF{{n}}[_HNSW{{M}}],Flat|SQ8 "
                         "or [OPQ{m}_{d},]IVF{n}[_HNSW{M}],PQ{m}[x{bits}] (the kinds that can "
                         "be filled in parts and merged)")
    opq, opq_d, nlist, hnsw, codec, pq, nbits = m.groups()
    kind = {"Flat": "ivf_flat", "SQ8": "ivf_sq8"}.get(codec, "ivf_pq")
    out: dict[str, int | str] = {"type": kind, "nlist": int(nlist), "hnsw": int(hnsw or 0)}
    if pq:
        out.update(pq=int(pq), nbits=int(nbits or 8))
    if opq:
        out.update(opq=int(opq), opq_d=int(opq_d or 0))
    return out


def estimate_bytes(key: str, n: int, d: int, direct_map: bool = True) -> int:
    """The index's size in memory (autofaiss's ``estimated_index_size_in_bytes``)."""
    k = describe(key)
    if k["type"] == "flat":
        return 4 * n * d
    nlist, out_d = int(k["nlist"]), int(k.get("opq_d") or d)
    per_vector = 8 + {"ivf_flat": 4 * out_d, "ivf_sq8": out_d}.get(
        str(k["type"]), math.ceil(int(k.get("pq", 0)) * int(k.get("nbits", 8)) / 8))
    total = n * per_vector + 4 * nlist * out_d + (8 * n if direct_map else 0)
    total += nlist * int(k["hnsw"]) * 2 * 4
    if k["type"] == "ivf_pq":  # the PQ codebooks (autofaiss leaves them out): 2^bits
        total += 4 * out_d * 2 ** int(k["nbits"])  # centroids per sub-vector, float32
    if k.get("opq"):
        total += 4 * d * out_d
    return total


def choose_key(n: int, d: int, budget: int) -> str:
    """The index kind for n vectors of d dims within ``budget`` bytes (module docstring);
    ValueError when not even the smallest PQ code fits."""
    if n < FLAT_THRESHOLD:
        return "Flat"
    nlist = nb_clusters(n)
    ivf_flat = f"IVF{nlist},Flat"
    if estimate_bytes(ivf_flat, n, d) <= budget:
        return ivf_flat
    coarse = f"IVF{nlist}_HNSW{HNSW_M}" if nlist >= HNSW_COARSE_FROM else f"IVF{nlist}"
    if estimate_bytes(f"{coarse},SQ8", n, d) <= budget:
        return f"{coarse},SQ8"
    tried = ""
    for m, bits in pq_codes(d, train_size(f"{coarse},Flat", n)):
        tried = f"{coarse},PQ{m}x{bits}"
        if estimate_bytes(tried, n, d) <= budget:
            return tried
    need = estimate_bytes(tried, n, d) if tried else 0
    raise ValueError(f"a memory budget of {budget:,} bytes is too small for {n:,} vectors of "
                     f"{d} dims (the smallest index, {tried or 'PQ'}, needs {need:,})")


def pq_codes(d: int, train: int) -> list[tuple[int, int]]:
    """The PQ codes to try for d dims, finest first: (sub-vectors m, bits a sub-code), m one
    of autofaiss's sizes dividing d; 9 and 10 bits as well as 8 where ``train`` vectors give
    each of the 2^bits sub-centroids its ``PQ_POINTS_PER_CODE`` points; at equal bits a
    vector, fewer bits a sub-code first (cheaper to train and to search)."""
    ms = [m for m in PQ_BYTES if m < d and d % m == 0]
    codes = [(m, b) for m in ms for b in PQ_BITS
             if b == 8 or train >= PQ_POINTS_PER_CODE * 2 ** b]
    return sorted(codes, key=lambda c: (-c[0] * c[1], c[1]))


def train_size(key: str, n: int) -> int:
    """Vectors to train on (autofaiss: 100 per list, at most n); 0 for Flat."""
    k = describe(key)
    return 0 if k["type"] == "flat" else min(n, TRAIN_PER_LIST * int(k["nlist"]))


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads inside the block (None: as they are)."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def normalise(x: np.ndarray) -> np.ndarray:
    """float32 rows of unit length (a zero row stays zero): what the index and the exact
    search both see, computed one way so they agree."""
    x = np.array(x, dtype=np.float32, copy=True, ndmin=2)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norm, out=x, where=norm > 0)
    return x


def new_index(key: str, d: int) -> Any:
    describe(key)
    index = faiss.index_factory(int(d), key, faiss.METRIC_INNER_PRODUCT)
    if hasattr(index, "do_polysemous_training"):  # the factory turns it on; autofaiss never
        index.do_polysemous_training = False
    return index


def train(key: str, sample: np.ndarray, seed: int = 0) -> Any:
    """An empty index of ``key``, trained on ``sample`` (normalised rows) when it needs it."""
    index = new_index(key, sample.shape[1])
    if not index.is_trained:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = seed
        if hasattr(ivf, "pq"):  # 64 points a code, not 256: 4x faster, same recall
            ivf.pq.cp.max_points_per_centroid = 64
        if len(sample) < ivf.nlist:
            raise ValueError(f"{key}: {len(sample)} training vectors for {ivf.nlist} lists")
        index.train(np.ascontiguousarray(sample, np.float32))
    return index


def add(index: Any, x: np.ndarray, first_id: int) -> None:
    """Append rows ``first_id, first_id + 1, ...``: a Flat index numbers rows by position
    (its parts are merged in order), an IVF one keeps the ids given."""
    x = np.ascontiguousarray(x, np.float32)
    if isinstance(index, faiss.IndexFlat):
        index.add(x)
    else:
        index.add_with_ids(x, np.arange(first_id, first_id + len(x), dtype=np.int64))


def merge(parts: list[Any]) -> Any:
    """One index from parts of one trained index, in order (the parts are emptied)."""
    base = parts[0]
    for other in parts[1:]:
        if isinstance(base, faiss.IndexFlat):
            base.merge_from(other, 0)
        else:
            faiss.merge_into(base, other, False)
    return base


def finish(index: Any) -> None:
    """After the last merge: the direct map (an IVF's own vectors by id)."""
    if not isinstance(index, faiss.IndexFlat):
        faiss.extract_index_ivf(index).make_direct_map()


def set_nprobe(index: Any, nprobe: int) -> dict[str, int]:
    """Search settings for ``nprobe`` lists (efSearch = 2 nprobe for an HNSW quantiser, at
    least 16); {} for a Flat index."""
    if isinstance(index, faiss.IndexFlat):
        return {}
    ivf = faiss.extract_index_ivf(index)
    params = {"nprobe": int(min(nprobe, ivf.nlist))}
    if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        params["efSearch"] = max(16, 2 * params["nprobe"])
    faiss.ParameterSpace().set_index_parameters(
        index, ",".join(f"{k}={v}" for k, v in params.items()))
    return params


def search(index: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, row ids) [nq, k], best first; -1 where fewer than k rows were found. An IVF
    index probes more lists than its nprobe when k asks for more rows than those lists
    hold on average (twice that many, for this call only): a large k is answered too."""
    q = np.ascontiguousarray(q, np.float32).reshape(-1, index.d)
    if isinstance(index, faiss.IndexFlat) or not index.ntotal:
        return index.search(q, int(k))
    ivf = faiss.extract_index_ivf(index)
    want = min(ivf.nlist, math.ceil(2 * k * ivf.nlist / index.ntotal))
    if want <= ivf.nprobe:
        return index.search(q, int(k))
    params = faiss.SearchParametersIVF(nprobe=want)
    inner = faiss.SearchParametersHNSW(efSearch=max(16, 2 * want))  # alive until searched
    if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        params.quantizer_params = inner
    return index.search(q, int(k), params=params)


def vector(index: Any, row: int) -> np.ndarray:
    """The indexed vector of ``row`` (a PQ kind: its decoded approximation)."""
    return index.reconstruct(int(row))


def write(index: Any, sink: Callable[[bytes], Any]) -> None:
    """Stream ``index`` to ``sink`` (a file's ``write``: any fsspec file)."""
    faiss.write_index(index, faiss.PyCallbackIOWriter(sink))


def read(source: Callable[[int], bytes]) -> Any:
    """An index from ``source`` (a file's ``read``)."""
    return faiss.read_index(faiss.PyCallbackIOReader(source))


# --------------------------------------------------------------------------- exact search
def exact_topk(q: np.ndarray, x: np.ndarray, k: int, first_id: int = 0,
               chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k inner products of ``q`` against ``x`` in chunks of rows: (scores,
    ids) [nq, min(k, len(x))] best first, ids counted from ``first_id``."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for lo in range(0, len(x), chunk):
        s = q @ x[lo:lo + chunk].T
        ids = np.broadcast_to(np.arange(lo, lo + s.shape[1], dtype=np.int64) + first_id,
                              s.shape)
        best_s, best_i = merge_topk([(best_s, best_i), (s, ids)], k)
    return best_s, best_i


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The top k of several (scores, ids) lists of the same queries; ties by smaller id."""
    s = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    if s.shape[1] == 0:
        return s, i
    order = np.lexsort((i, -s), axis=1) if s.shape[1] <= 4 * k else None
    if order is None:  # argpartition first: a chunk has many more columns than k
        keep = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k + 1]
        s, i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
        order = np.lexsort((i, -s), axis=1)
    order = order[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, self_ids: np.ndarray, k: int,
                of: int | None = None) -> float:
    """Mean share of each query's ``of`` (default k) true nearest other rows (``truth``,
    the query's own row left out) among the k nearest others the index returned
    (``found``): k-recall@k by default (the top-k sets compared), 1-recall@k with
    ``of=1`` (the true nearest neighbour within the top k: the PQ literature's recall@k)."""
    hits = total = 0
    for f, t, me in zip(found, truth, self_ids):
        want = [j for j in t if j != me and j >= 0][:of or k]
        got = [j for j in f if j != me and j >= 0][:k]
        hits += len(set(got) & set(want))
        total += len(want)
    return hits / total if total else 1.0


def tune_nprobe(index: Any, q: np.ndarray, truth: np.ndarray, self_ids: np.ndarray,
                k: int = 10, target: float = 0.95, max_nprobe: int = 4096
                ) -> tuple[int, list[tuple[int, float]]]:
    """The smallest power-of-two nprobe whose recall@k on ``q`` reaches ``target``, or the
    first one that gained less than half a point over half as many lists (the codes bound
    the recall; that last doubling is kept, the cheaper of what is left): (nprobe, the
    ladder of (nprobe, recall) tried). 0 for a Flat index (exact)."""
    if isinstance(index, faiss.IndexFlat):
        return 0, []
    nlist = faiss.extract_index_ivf(index).nlist
    ladder: list[tuple[int, float]] = []
    nprobe = 1
    while True:
        set_nprobe(index, nprobe)
        r = recall_at_k(search(index, q, k + 1)[1], truth, self_ids, k)
        ladder.append((nprobe, r))
        if r >= target or nprobe >= min(nlist, max_nprobe):
            return nprobe, ladder
        if len(ladder) > 1 and r - ladder[-2][1] < 0.005:
            return nprobe, ladder
        nprobe *= 2
