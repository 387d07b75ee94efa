"""5. Scale: preprocess + one training epoch + predict at growing sizes, each in a fresh process.

Sizes are total images (train 80%, val 10%, test 10%), 64x64, generated once at the
largest size; the smaller sets are leading slices of it. The epoch uses a small CNN
and flip-only augmentation (SCALE_OVERRIDES) so that 160k images fit `make bench`'s time.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.datasets import generate, subset
from benchmarks.figures import Figure, Result
from benchmarks.timing import Stopwatch, interleaved
from benchmarks.workspace import REPO, RESNET20, Workspace, say

LINEARITY_TARGET = 1.2  # marginal seconds per image may grow at most 20% from the small to the large sizes
NOISE_SECONDS = 5.0  # start-up of a fresh process varies by a few seconds: smaller steps say nothing
RSS_TARGET_GIB = 3.0
GIB = 2**30
SCALE_OVERRIDES = {
    "train.epochs": 1,
    "model.name": "cnn",  # 7,620 parameters: ~1,200 images/s of training here, vs ~30-100 for ResNet20
    "model.params": {"filters": [8, 16, 16], "paddings": ["same"] * 3, "pool_strides": [2, 2, 2], "dense_units": 32},
    "augment": {"horizontal_flip": True},
}


def run(ws: Workspace) -> Result:
    """Every size in a fresh worker, `scale_repeats` rounds in ABC CBA order; each size's fastest round."""
    sizes = sorted(ws.sizes.scale)
    full = make_full(ws, sizes[-1])
    data = {size: full if size == sizes[-1] else subset(full, ws.root / f"scale-{size}", size / sizes[-1])
            for size in sizes}
    variants = {size: functools.partial(run_worker, ws, data[size], ws.root / f"scale-{size}.log") for size in sizes}
    rounds = interleaved(variants, ws.sizes.scale_repeats).outputs
    runs = [fastest(size, rounds[size]) for size in sizes]
    return Result("scale", figures(runs), {"runs": runs, "rounds": rounds, "overrides": SCALE_OVERRIDES}, notes(runs))


def fastest(size: int, rounds: list[dict]) -> dict:
    """The round with the least wall time, with the highest peak RSS of all rounds (memory: the worst case)."""
    best = min(rounds, key=lambda r: r["wall_seconds"])
    return {"images": size, **best, "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rounds)}


def make_full(ws: Workspace, total: int) -> Path:
    """The largest set: 80/10/10 per class over the workspace's classes."""
    classes = ws.sizes.classes
    per_class, held_out = round(0.8 * total / classes), max(1, round(0.1 * total / classes))
    with Stopwatch() as watch:
        path = generate(ws.root / "scale-full", classes, per_class, held_out, held_out)
    say(f"  generated {total} images in {watch.seconds:.0f} s")
    return path


def run_worker(ws: Workspace, data: Path, log: Path) -> dict:
    """benchmarks.scale_worker in a fresh interpreter, with a new cache: its stage times and peak RSS, wall time."""
    out, cache = log.with_suffix(".json"), Path(tempfile.mkdtemp(prefix="cache-", dir=ws.root))
    command = [sys.executable, "-m", "benchmarks.scale_worker", str(data), str(RESNET20),
               json.dumps({"data.cache_dir": str(cache), **SCALE_OVERRIDES}), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        with log.open("w") as handle, Stopwatch() as watch:
            code = subprocess.run(command, check=False, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # every round decodes afresh; 160k images cache to 2 GB
    if code:
        raise RuntimeError(f"scale run on {data} failed (exit {code}); log:\n"
                           + "\n".join(log.read_text().splitlines()[-30:]))
    result = {**json.loads(out.read_text()), "wall_seconds": watch.seconds}
    say(f"  {log.stem}: {watch.seconds:.0f} s, peak RSS {result['peak_rss_bytes'] / GIB:.2f} GiB")
    return result


def figures(runs: list[dict]) -> list[Figure]:
    """Linearity (marginal cost per image, last step / first step) and peak RSS at the largest size."""
    largest = runs[-1]
    result = [Figure("scale_peak_rss", f"Scale: peak RSS at {largest['images']} images",
                     largest["peak_rss_bytes"] / GIB, RSS_TARGET_GIB, "lower", unit=" GiB",
                     detail=f"(anonymous {largest['peak_anon_rss_bytes'] / GIB:.2f} GiB)")]
    if len(runs) >= 3:
        first, last = marginal(runs[0], runs[1]), marginal(runs[-2], runs[-1])
        detail = f"({last * 1e3:.2f} vs {first * 1e3:.2f} ms per image)"
        readable = runs[1]["wall_seconds"] - runs[0]["wall_seconds"] >= NOISE_SECONDS
        if not readable:  # start-up noise outweighs the extra images: no slope to compare
            detail += ", sizes too small to tell: use larger --scale sizes"
        result.insert(0, Figure("scale_linearity", "Scale: marginal time per image, largest step / smallest step",
                                last / first if readable else None, LINEARITY_TARGET, "lower", detail=detail))
    return result


def marginal(small: dict, large: dict) -> float:
    """Seconds per extra image between two runs: fixed start-up costs cancel out."""
    return (large["wall_seconds"] - small["wall_seconds"]) / (large["images"] - small["images"])


def notes(runs: list[dict]) -> list[str]:
    lines = []
    for r in runs:
        stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in r["stage_seconds"].items())
        peaks = ", ".join(f"{name} {p['rss'] / GIB:.2f}/{p['anon'] / GIB:.2f}" for name, p in r["stage_peaks"].items())
        lines.append(f"{r['images']} images: {r['wall_seconds']:.0f} s ({stages}); peak RSS "
                     f"{r['peak_rss_bytes'] / GIB:.2f} GiB; by stage, RSS/anonymous GiB: {peaks}")
    return lines
