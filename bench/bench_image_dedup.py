"""Benchmark: image hashing throughput and the image_dedup partition task's memory.

1. Hashing, one core: curate's ``image_hashes`` (sha256 of the bytes, sha256 of the decoded
   pixels, imagehash's phash) against a bare loop of ``imagehash.phash`` on the same JPEGs
   (the reference: what any perceptual-dedup script does per image). Both decode.
2. The dedup step's memory as the pool grows: synthetic hash records (random 64-bit hashes,
   with planted exact copies and near copies) for pools of 100k and 1M pairs are routed
   exactly as the stage routes them (bytes, pixels, radius + 1 phash bands) into the number
   of partitions the stage chooses (``PARTITION_RECORDS`` per task), and the largest
   partition goes through the stage's grouping (``exact``, ``near``, ``placeholders``) in a
   fresh process that reports its peak RSS. Image decoding is left out here: hashing 1M
   images would take hours on 2 cores, and the per-image cost is figure 1.

Run: ``python bench/bench_image_dedup.py [--images 600] [--sizes 100000,1000000]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

RADIUS = 4


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(8):
            x0, y0 = (int(v) for v in rng.integers(0, 280, 2))
            d.ellipse([x0, y0, x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 90))],
                      fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        img.filter(ImageFilter.GaussianBlur(1)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def hashing(n: int) -> None:
    import imagehash
    from PIL import Image

    from curate.media.imagehashes import image_hashes

    data = _jpegs(n)
    t = time.perf_counter()
    for b in data:
        imagehash.phash(Image.open(io.BytesIO(b)).convert("RGB"))
    ref = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for b in data:
        image_hashes(b)
    ours = n / (time.perf_counter() - t)
    print(f"| hashing, {n} JPEGs 320x240, one core | curate {ours:,.0f} images/s | bare "
          f"imagehash.phash loop {ref:,.0f} images/s | ratio {ours / ref:.2f} | peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB |")


def make_partition(n: int, path: str) -> None:
    """The largest partition of an n-pair pool, routed as the stage routes, saved to path."""
    from curate.algorithms import image_dedup as alg
    from curate.stages.image_dedup import PARTITION_RECORDS

    rng = np.random.default_rng(n)
    routes = 2 + RADIUS + 1
    parts = max(1, -(-n * routes // PARTITION_RECORDS))
    order = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    b = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    b[: n // 50] = b[n // 50: 2 * (n // 50)]  # 2% exact copies
    h[: n // 20] = h[n // 20: 2 * (n // 20)] ^ np.uint64(3)  # 5% near copies
    host = rng.integers(0, 1000, n).astype(np.uint64)
    cap = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    keys = [(alg.BYTES, b, 0), (alg.PIXELS, b ^ np.uint64(7), 1)] + [
        (alg.BAND0 + j, v, 2 + j) for j, v in enumerate(alg.band_values(h, RADIUS))]
    counts = np.zeros(parts, np.int64)
    for _, key, salt in keys:
        counts += np.bincount(alg.route(key, salt, parts), minlength=parts)
    j = int(np.argmax(counts))
    out = {"parts": np.array([parts])}
    for kind, key, salt in keys:
        rows = np.flatnonzero(alg.route(key, salt, parts) == j)
        for name, col in (("o", order), ("k", key), ("h", h), ("host", host), ("cap", cap)):
            out[f"{kind}_{name}"] = col[rows]
    np.savez(path, **out)


def partition_task(path: str) -> dict:
    """In a fresh process: what one dedup task does with its partition's records."""
    from curate.algorithms import image_dedup as alg

    z = np.load(path)
    kinds = sorted({int(k.split("_")[0]) for k in z.files if k != "parts"})
    t = time.perf_counter()
    flagged = records = 0
    for kind in kinds:
        o, key, h = z[f"{kind}_o"], z[f"{kind}_k"], z[f"{kind}_h"]
        records += len(o)
        if kind < alg.BAND0:
            flagged += int(alg.exact(o, key)[0].sum())
            alg.placeholders(key, z[f"{kind}_host"], z[f"{kind}_cap"], 10)
        else:
            flagged += int(alg.near(o, h, key, RADIUS)[0].sum())
    return {"partitions": int(z["parts"][0]), "records": records, "flagged": flagged,
            "seconds": time.perf_counter() - t,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--make", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_partition(int(args.make[0]), args.make[1])
        return 0
    if args.task:
        print(json.dumps(partition_task(args.task)))
        return 0
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}")
    hashing(args.images)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        path = f"/tmp/bench-image-dedup-{n}.npz"
        subprocess.run([sys.executable, __file__, "--make", str(n), path], check=True)
        out = subprocess.run([sys.executable, __file__, "--task", path], check=True,
                             capture_output=True, text=True).stdout
        os.remove(path)
        r = json.loads(out.strip().splitlines()[-1]) | {"n": n}
        results.append(r)
        print(f"| dedup task, pool of {n:,} | {r['partitions']} partitions, largest "
              f"{r['records']:,} records | {r['seconds']:.2f} s | peak RSS "
              f"{r['peak_mb']:.0f} MB | flagged {r['flagged']:,} |")
    if len(results) > 1:
        a, z = results[0], results[-1]
        print(f"task peak RSS {z['peak_mb']:.0f} MB at {z['n']:,} vs {a['peak_mb']:.0f} MB at "
              f"{a['n']:,} = {z['peak_mb'] / a['peak_mb']:.2f}x (goal <= 1.1x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
