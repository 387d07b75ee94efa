"""Near-duplicate audit at scale: perceptual hashing and grouping time per image count.

    python -m benchmarks.near_duplicates --sizes 10000          # about a minute on 2 cores
    python -m benchmarks.near_duplicates --sizes 10000,160000   # 160k: tens of minutes (rendering dominates)

Images are aigc's synthetic 64x64 renders (100 classes) with 1% edited copies (JPEG round trip,
resize, brightness) mixed in, so groups exist. Two figures per size: hashing, which preprocess
does once per image while the decoded pixels are in memory (a cached dataset never hashes again),
and grouping (multi-index hashing, aigc.audit.near_duplicate_groups), which preprocess and cv
run every time. Rendering is not timed. Grouping must grow about linearly: compare the
seconds per image of the two sizes.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from aigc.audit import near_duplicate_groups
from aigc.data.decode import perceptual_hash
from aigc.data.synthetic import render


def images(count: int, seed: int = 0):
    rng, previous = np.random.default_rng(seed), None
    for n in range(count):
        if n % 100 == 99:  # an edited copy of the previous image: JPEG round trip
            buffer = io.BytesIO()
            Image.fromarray(previous).save(buffer, format="JPEG", quality=80)
            yield np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
            continue
        previous = render(int(rng.integers(100)), 100, 64, rng)
        yield previous


def measure(count: int, distance: int) -> dict:
    hashes, hashing = np.zeros(count, np.uint64), 0.0
    for n, pixels in enumerate(images(count)):
        start = time.perf_counter()
        hashes[n] = perceptual_hash(Image.fromarray(pixels))
        hashing += time.perf_counter() - start
    keys = [f"train/{n}" for n in range(count)]
    start = time.perf_counter()
    groups = near_duplicate_groups(keys, hashes, distance)
    grouping = time.perf_counter() - start
    return {"images": count, "hash_s": round(hashing, 2), "group_s": round(grouping, 3), "groups": len(groups),
            "hash_us_per_image": round(1e6 * hashing / count, 1), "group_us_per_image": round(1e6 * grouping / count, 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.near_duplicates")
    parser.add_argument("--sizes", default="10000", help="comma-separated image counts")
    parser.add_argument("--distance", type=int, default=4, help="data.near_duplicate_distance")
    args = parser.parse_args(argv)
    for size in (int(s) for s in args.sizes.split(",")):
        print(measure(size, args.distance), flush=True)


if __name__ == "__main__":
    main()
