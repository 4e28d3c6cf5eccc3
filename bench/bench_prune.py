"""Benchmark of the prune algorithms: k-means (ours vs scikit-learn), assignment, SemDeDup, DBP.

Synthetic CLIP-like data: ``--n`` unit vectors in ``--d`` dimensions around ``--k`` random
concept centres (cosine ~0.75 to their centre), with ``--dup-frac`` of the rows replaced by
near-copies (cosine ~0.999) of other rows. Stored as float16 (as ``scores/`` stores
embeddings), generated in chunks, so the pool costs n * d * 2 bytes.

Measured in one process, on the same training sample (``--per-centroid`` * k rows drawn
with ``curate.algorithms.kmeans.sample_mask``):

- ours: ``train_kmeans`` (greedy k-means++ seeding on a subset + FAISS spherical Lloyd);
- scikit-learn ``KMeans`` (same k, ``max_iter = --niter``, ``n_init=1``, k-means++);
  ``--sk-lloyd`` also times the two halves apart -- greedy k-means++ on the same subset
  (ours vs ``sklearn.cluster.kmeans_plusplus``) and Lloyd from the same seeds (FAISS vs
  sklearn, per iteration); ``--sk-sample`` trains sklearn (and a second run of ours) on a
  smaller common sample when the full one is too slow for sklearn;
- the streamed assignment of the whole pool (``--chunk`` rows at a time);
- SemDeDup over all clusters (items/s, planted-duplicate recall, false drops);
- DBP statistics and quotas;
- with ``--gpu``: FAISS GPU vs CPU training on the same sample.

Peak RSS comes from ``resource.getrusage`` (the high-water mark of the process).

    python bench/bench_prune.py                      # 1M x 512, k = 1,000 (minutes)
    python bench/bench_prune.py --n 50000 --k 100    # a quick run
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg} (peak RSS {rss_gib():.2f} GiB)", flush=True)


def make_pool(n: int, d: int, k: int, dup_frac: float, seed: int, chunk: int):
    """float16 (n, d) embeddings, true concept ids, and planted (duplicate, source) rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(0, k, size=n).astype(np.int32)
    emb = np.empty((n, d), dtype=np.float16)
    sigma = np.float32(0.9 / np.sqrt(d))  # noise norm ~0.9: cosine ~0.75 to the centre
    for s in range(0, n, chunk):
        x = centres[truth[s : s + chunk]]
        x += sigma * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        emb[s : s + chunk] = x
    n_dup = int(dup_frac * n)
    perm = rng.permutation(n)
    dst, src = np.sort(perm[:n_dup]), perm[n_dup : 2 * n_dup]
    tiny = np.float32(0.045 / np.sqrt(d))  # cosine ~0.999 to the source
    for s in range(0, n_dup, chunk):
        x = emb[src[s : s + chunk]].astype(np.float32)
        x += tiny * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        emb[dst[s : s + chunk]] = x
        truth[dst[s : s + chunk]] = truth[src[s : s + chunk]]
    uids = np.array([f"{v:016x}" for v in rng.integers(0, 2**63, size=n)], dtype=object)
    return emb, truth, dst, src, uids


def mean_sim(x: np.ndarray, cent: np.ndarray, chunk: int = 16384) -> float:
    """Mean cosine of each row to its nearest (normalised) centroid."""
    c = cent / np.linalg.norm(cent, axis=1, keepdims=True)
    tot = 0.0
    for s in range(0, len(x), chunk):
        tot += float((x[s : s + chunk] @ c.T).max(axis=1).sum())
    return tot / len(x)


def run_sklearn(x: np.ndarray, k: int, niter: int, seed: int, init) -> tuple[float, object]:
    from sklearn.cluster import KMeans

    t = time.perf_counter()
    sk = KMeans(
        n_clusters=k,
        init=init,
        n_init=1,
        max_iter=niter,
        tol=0.0,
        algorithm="lloyd",
        random_state=seed,
        copy_x=False,
    ).fit(x)
    return time.perf_counter() - t, sk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--per-centroid", type=int, default=256, help="max_points_per_centroid")
    ap.add_argument("--dup-frac", type=float, default=0.05)
    ap.add_argument("--eps", type=float, default=0.01, help="SemDeDup eps (cosine distance)")
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sk-sample", type=int, default=0, help="train sklearn on this many rows")
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--sk-lloyd", action="store_true", help="also sklearn Lloyd from our seeds")
    ap.add_argument("--gpu", action="store_true", help="also FAISS GPU training (vs CPU)")
    a = ap.parse_args()

    import faiss
    from sklearn.metrics import adjusted_rand_score

    from curate.algorithms import dbp, kmeans, semdedup

    print(
        f"n={a.n} d={a.d} k={a.k} niter={a.niter} cores={os.cpu_count()} "
        f"faiss={faiss.__version__} omp_threads={faiss.omp_get_max_threads()} "
        f"gpus={kmeans.gpu_count()} OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} "
        f"loadavg={os.getloadavg()}",
        flush=True,
    )
    t = time.perf_counter()
    emb, truth, dst, src, uids = make_pool(a.n, a.d, a.k, a.dup_frac, a.seed, a.chunk)
    log(
        f"pool: {emb.nbytes / 2**30:.2f} GiB float16, {len(dst)} planted duplicates, "
        f"{time.perf_counter() - t:.1f} s"
    )

    # ---- the training sample (as the prune stage draws it: by uid hash, per shard)
    frac = kmeans.sample_fraction(a.n, a.k, a.per_centroid)
    rows = np.concatenate(
        [
            s + np.flatnonzero(kmeans.sample_mask(uids[s : s + a.chunk], frac, a.seed))
            for s in range(0, a.n, a.chunk)
        ]
    )
    rows = rows[: a.per_centroid * a.k]
    sample = emb[rows].astype(np.float32)
    log(f"sample: {len(sample)} rows ({sample.nbytes / 2**30:.2f} GiB float32)")

    # ---- ours (CPU)
    t = time.perf_counter()
    model = kmeans.train_kmeans(sample, a.k, niter=a.niter, seed=a.seed, use_gpu=False)
    t_ours = time.perf_counter() - t
    lab_s, _ = model.assign(sample)
    ari_ours = adjusted_rand_score(truth[rows], lab_s)
    log(
        f"ours: {t_ours:.1f} s (seeding {model.seconds['init']:.1f} s, "
        f"Lloyd {model.seconds['lloyd']:.1f} s, {model.iterations} it), "
        f"mean sim {model.objective / len(sample):.4f}, ARI vs truth {ari_ours:.4f}"
    )

    results = {"ours_s": t_ours}
    if a.gpu:
        if kmeans.gpu_count() == 0:
            print("--gpu: no GPU visible, skipped", flush=True)
        else:
            t = time.perf_counter()
            gm = kmeans.train_kmeans(sample, a.k, niter=a.niter, seed=a.seed, use_gpu=True)
            t_gpu = time.perf_counter() - t
            ari_g = adjusted_rand_score(truth[rows], gm.assign(sample)[0])
            log(
                f"ours GPU: {t_gpu:.1f} s (seeding {gm.seconds['init']:.1f} s, Lloyd "
                f"{gm.seconds['lloyd']:.1f} s), ARI {ari_g:.4f}; CPU/GPU = {t_ours / t_gpu:.1f}x"
            )
            t = time.perf_counter()
            gm.assign(emb[: min(a.n, 10 * a.chunk)], batch=a.chunk)
            log(f"GPU assign of {min(a.n, 10 * a.chunk)} rows: {time.perf_counter() - t:.1f} s")

    # ---- sklearn on the same sample (or a smaller common one)
    if not a.no_sklearn:
        from sklearn.cluster import kmeans_plusplus

        skx, sk_rows, ours = sample, rows, model
        if a.sk_sample and a.sk_sample < len(sample):
            skx, sk_rows = sample[: a.sk_sample], rows[: a.sk_sample]
            t = time.perf_counter()
            ours = kmeans.train_kmeans(skx, a.k, niter=a.niter, seed=a.seed, use_gpu=False)
            t_ours = time.perf_counter() - t
            ari_o = adjusted_rand_score(truth[sk_rows], ours.assign(skx)[0])
            log(
                f"ours on the common {len(skx)}-row sample: {t_ours:.1f} s (seeding "
                f"{ours.seconds['init']:.1f} s, Lloyd {ours.seconds['lloyd']:.1f} s, "
                f"{ours.iterations} it), ARI {ari_o:.4f}"
            )
        t_sk, sk = run_sklearn(skx, a.k, a.niter, a.seed, "k-means++")
        ari_sk = adjusted_rand_score(truth[sk_rows], sk.labels_)
        log(
            f"sklearn KMeans: {t_sk:.1f} s ({sk.n_iter_} it), mean sim "
            f"{mean_sim(skx, sk.cluster_centers_):.4f}, ARI vs truth {ari_sk:.4f}"
        )
        results.update(sklearn_s=t_sk, ratio=t_sk / t_ours)
        print(
            f"RATIO sklearn / ours (k-means training, same sample): {t_sk / t_ours:.2f}x",
            flush=True,
        )
        if a.sk_lloyd:
            # the two halves separately: seeding on the same subset, Lloyd from the same seeds
            sub = skx[
                np.sort(
                    np.random.default_rng([a.seed, 1]).choice(
                        len(skx), size=min(len(skx), 16 * a.k), replace=False
                    )
                )
            ]
            t = time.perf_counter()
            kmeans.kmeans_plusplus(sub, a.k, a.seed)
            t_o = time.perf_counter() - t
            t = time.perf_counter()
            kmeans_plusplus(sub, a.k, random_state=a.seed, x_squared_norms=np.ones(len(sub)))
            t_s = time.perf_counter() - t
            log(f"greedy k-means++ on {len(sub)} rows: ours {t_o:.1f} s, sklearn {t_s:.1f} s")
            seeds = kmeans._init_centroids(skx, a.k, "kmeans++", a.seed, 16 * a.k)
            t_l, sk2 = run_sklearn(skx, a.k, a.niter, a.seed, seeds)
            lo = ours.seconds["lloyd"]
            log(
                f"Lloyd from the same seeds: sklearn {t_l:.1f} s ({sk2.n_iter_} it, "
                f"{t_l / sk2.n_iter_:.2f} s/it, ARI "
                f"{adjusted_rand_score(truth[sk_rows], sk2.labels_):.4f}) vs FAISS {lo:.1f} s "
                f"({ours.iterations} it, {lo / ours.iterations:.2f} s/it)"
            )
        del skx

    del sample
    # ---- streamed assignment of the whole pool
    labels = np.empty(a.n, dtype=np.int32)
    dist = np.empty(a.n, dtype=np.float32)
    t = time.perf_counter()
    for s in range(0, a.n, a.chunk):
        lab, sim = model.assign(emb[s : s + a.chunk], batch=a.chunk)
        labels[s : s + a.chunk] = lab
        dist[s : s + a.chunk] = 1.0 - sim
    t_assign = time.perf_counter() - t
    log(
        f"assign {a.n} rows in chunks of {a.chunk}: {t_assign:.1f} s ({a.n / t_assign:,.0f} rows/s)"
    )

    # ---- SemDeDup over every cluster
    t = time.perf_counter()
    dup = semdedup.dedup_by_cluster(emb, labels, dist, a.eps, keep="hard")
    t_dd = time.perf_counter() - t
    dropped = dup >= 0
    found = (dropped[dst] | dropped[src]).mean() if len(dst) else 1.0
    planted = np.zeros(a.n, dtype=bool)
    planted[dst] = planted[src] = True
    sizes = np.bincount(labels, minlength=a.k)
    log(
        f"SemDeDup eps={a.eps}: {t_dd:.1f} s, {a.n / t_dd:,.0f} items/s, dropped "
        f"{dropped.sum()} ({found:.2%} of planted pairs found, {(dropped & ~planted).sum()} "
        f"drops outside planted pairs), cluster sizes {sizes.min()}..{sizes.max()}"
    )

    # ---- DBP
    t = time.perf_counter()
    count, total = np.zeros(a.k, np.int64), np.zeros(a.k)
    keep = ~dropped
    for s in range(0, a.n, a.chunk):
        c, tt = dbp.accumulate(
            labels[s : s + a.chunk][keep[s : s + a.chunk]],
            dist[s : s + a.chunk][keep[s : s + a.chunk]],
            a.k,
        )
        count += c
        total += tt
    st = dbp.cluster_stats_from_sums(model.centroids, count, total)
    q = dbp.quotas(st["complexity"], st["size"], target=int(keep.sum() // 2), tau=0.5)
    log(f"DBP stats + quotas: {time.perf_counter() - t:.2f} s, kept {q.sum()} of {keep.sum()}")

    results.update(assign_s=t_assign, dedup_items_per_s=a.n / t_dd, peak_rss_gib=rss_gib())
    print(f"load average at the end: {os.getloadavg()}", flush=True)
    print("SUMMARY " + " ".join(f"{k}={v:.3g}" for k, v in results.items()), flush=True)


if __name__ == "__main__":
    main()
