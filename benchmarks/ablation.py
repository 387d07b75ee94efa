"""The small-image tricks' accuracy on synthetic data shaped like the two competitions: each fast recipe
with every trick off, each trick alone on it, and the recipe as shipped (`python -m benchmarks.ablation`;
not part of `make bench`; the tricks' cost is `python -m benchmarks tricks`).

Small on purpose (2 shared CPU cores, about 40 minutes in all): the recipes' networks at width 16, a
fixed number of epochs (one-cycle ending with them, no budget), one seed (`--seed` reruns with another),
far fewer images than the real sets (deepfake 1,500 of 12,500; gic 1,500 of 13,000). The figure is the
last epoch's validation accuracy: under a planned schedule the train step keeps the last weights
(`train.select_on` auto), so that is what a recipe would ship; the best epoch is shown beside it. `deepfake`: 5 classes at 100x100 told apart only by how each image was upsampled
(`make_dataset(fingerprints=True)`: the content is any class's, the label is in the fine pixel
statistics, as with the competition's generators). `gic`: 100 content classes at 64x64 (shape,
texture, colour). What it can show: whether a trick breaks or clearly helps training on data of this
shape in this few epochs. What it cannot: which trick helps on the real images, nor small differences
(the fingerprint runs sit at the edge of learning at all: the same whitened config reached 41% in one
run and 61% in another), hence every trick stays a switch.

    python -m benchmarks.ablation [--quick] [--shapes deepfake gic] [--variants NAME ...] [--seed N] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shape:
    recipe: str
    layout: str
    classes: int
    size: int
    per_class: int
    val_per_class: int
    epochs: int
    fingerprints: bool


SHAPES = {
    "deepfake": Shape("deepfake_fast", "deepfake", 5, 100, per_class=300, val_per_class=100, epochs=8, fingerprints=True),
    "gic": Shape("gic_fast", "gic", 100, 64, per_class=15, val_per_class=3, epochs=6, fingerprints=False),
}
QUICK = {"per_class": 8, "val_per_class": 4, "epochs": 2}
WIDTH = 16  # the recipes use 32 (deepfake) and 24 (gic): a quarter to half the compute per image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few images and epochs: a smoke test")
    parser.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--variants", nargs="*", metavar="NAME", help="only these variants (default: all)")
    parser.add_argument("--seed", type=int, default=42, help="train.seed: initial weights, order, augmentation "
                        "(the data stay the same)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.__main__ import quiet

    quiet()
    results = {}
    with tempfile.TemporaryDirectory(prefix="aigc-ablation-") as root:
        for name in args.shapes:
            shape = SHAPES[name]
            if args.quick:
                shape = Shape(**{**asdict(shape), **QUICK})
            results[name] = {"shape": asdict(shape), "seed": args.seed,
                             "runs": ablate(shape, Path(root) / name, args.variants, args.seed)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (args.out / "ablation.md").write_text(table)
    print("\n" + table)
    return 0


def ablate(shape: Shape, root: Path, only: list[str] | None = None, seed: int = 42) -> dict:
    """The recipe with every trick off, each trick alone on it, the recipe as shipped: {variant: its run}."""
    from aigc.data import load_data
    from aigc.data.synthetic import make_dataset
    from benchmarks.tricks import variants

    data = make_dataset(root / "data", layout=shape.layout, classes=shape.classes, per_class=shape.per_class,
                        size=shape.size, seed=11, val_per_class=shape.val_per_class, test_per_class=1,
                        fingerprints=shape.fingerprints)
    runs = {}
    for name, overrides in variants().items():
        if only and name not in only:
            continue
        config = configure(shape, root, {**overrides, "train.seed": seed})
        dataset, cache = load_data(data, config.data, progress=False)
        started = time.perf_counter()
        runs[name] = {**train(config, dataset, cache), "seconds": time.perf_counter() - started}
        run = runs[name]
        print(f"{shape.layout} {name}: val_accuracy last {run['last']:.3f}, best {run['best']:.3f}, "
              f"{run['images_per_second']:.0f} images/s, {run['seconds']:.0f} s", flush=True)
    return runs


def configure(shape: Shape, root: Path, overrides: dict):
    from aigc.config import load

    return load(REPO / "configs" / f"{shape.recipe}.yaml", {
        "train.budget_minutes": None, "train.epochs": shape.epochs, "train.precision": "float32",
        "model.params.width": WIDTH, "data.cache_dir": str(root / "cache"), **overrides})


def train(config, dataset, cache) -> dict:
    """Fit as the train step does (whitening from the training images, aigc's fit, the weights kept as it keeps
    them); the epochs' val_accuracy."""
    from aigc import training
    from aigc.data.pipeline import eval_dataset, train_dataset
    from benchmarks.tricks import build

    images, labels = cache.images("train"), dataset.splits["train"].labels
    classes = dataset.num_classes
    _, fitted = build(config, classes, images)
    train_ds = train_dataset(images, labels, classes, config.data, config.augment, config.train.seed)
    val_ds = eval_dataset(cache.images("val"), dataset.splits["val"].labels, classes, config.data.batch_size)
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):  # Keras' epoch lines
        history = training.fit(fitted, train_ds, val_ds, config.train, Path(workdir), [], len(labels),
                               select=training.selection(config.train)).history
    curve = history["val_accuracy"]
    return {"best": max(curve), "last": curve[-1], "curve": curve,
            "images_per_second": statistics.median(history["images_per_second"][1:] or history["images_per_second"])}


def markdown(results: dict) -> str:
    from benchmarks.tricks import NONE

    lines = []
    for name, result in results.items():
        shape, runs = result["shape"], result["runs"]
        plain = runs.get(NONE)
        lines += [f"### {name}: {shape['classes']} classes, {shape['size']}x{shape['size']}, "
                  f"{shape['classes'] * shape['per_class']} train / {shape['classes'] * shape['val_per_class']} "
                  f"validation images, {shape['epochs']} epochs, width {WIDTH}, train.seed {result['seed']}", "",
                  "| variant | val acc. (last epoch) | change | best epoch's | images/s |", "|---|---|---|---|---|"]
        for variant, run in runs.items():
            change = "" if variant == NONE or not plain else f"{100 * (run['last'] - plain['last']):+.1f} pt"
            lines.append(f"| {variant} | {run['last']:.3f} | {change} | {run['best']:.3f} | "
                         f"{run['images_per_second']:.0f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
