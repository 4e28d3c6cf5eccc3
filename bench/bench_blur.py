"""Face blur cost at emit: ms per image with 0, 1 and 3 faces at 512 px.

For each face count: ``blur_image_bytes`` (decode JPEG, blur, re-encode at quality 95: what
emit does per curated image), and the blur alone on the decoded array, ours
(``curate.media.blur.blur_boxes``, OpenCV) against img2dataset's ``BoundingBoxBlurrer``
(albumentations) on the same arrays: the ratio, and that the pixels agree.

    .venv/bin/python bench/bench_blur.py [--images 40]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from _common import machine, peak_rss_mb  # noqa: E402

FACES = {0: [], 1: [[0.3, 0.25, 0.55, 0.6]],
         3: [[0.05, 0.1, 0.25, 0.35], [0.4, 0.3, 0.6, 0.6], [0.7, 0.55, 0.95, 0.9]]}


def _jpeg(rng: np.random.Generator) -> bytes:
    from PIL import Image

    # smooth content (JPEG-like cost), not noise
    small = rng.integers(0, 256, (32, 32, 3), np.uint8)
    img = Image.fromarray(small).resize((512, 512), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _ms(fn, items) -> float:
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - t0) * 1000 / len(items)


def main() -> None:
    import warnings

    from img2dataset.blurrer import BoundingBoxBlurrer
    from PIL import Image

    from curate.media.blur import blur_boxes, blur_image_bytes

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    data = [_jpeg(rng) for _ in range(args.images)]
    arrays = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in data]
    ref = BoundingBoxBlurrer()
    print(f"machine: {machine()}; {args.images} JPEGs of 512 x 512")
    print("| faces | emit: bytes -> bytes ms/image | blur only, ours ms | img2dataset ms | "
          "ours / img2dataset | max abs diff |")
    print("|---|---|---|---|---|---|")
    for n, boxes in FACES.items():
        blur_image_bytes(data[0], boxes)  # warm up (imports)
        emit_ms = _ms(lambda d, b=boxes: blur_image_bytes(d, b, "jpg"), data)
        ours = _ms(lambda a, b=boxes: blur_boxes(a, b), arrays)
        theirs = _ms(lambda a, b=boxes: ref(a, b), arrays)
        diff = max(int(np.abs(blur_boxes(a, boxes).astype(int) - ref(a, boxes)).max())
                   for a in arrays[:5])
        ratio = ours / theirs if theirs > 0 else float("nan")
        print(f"| {n} | {emit_ms:.2f} | {ours:.2f} | {theirs:.2f} | {ratio:.2f} | {diff} |")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
