"""1. Input pipeline: aigc's steady-state training input vs the seeds' ImageDataGenerator, same PNGs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from aigc.config import AugmentConfig
from aigc.data import load_data
from aigc.data.pipeline import train_dataset
from benchmarks.figures import Figure, Result, Skip
from benchmarks.timing import Stopwatch, interleaved
from benchmarks.workspace import Workspace

TARGET = 5.0


def run(ws: Workspace) -> Result:
    """Cache build once, then aigc epochs from the cache and IDG epochs from the files, interleaved."""
    config = ws.config()
    build_config = dataclasses.replace(config.data, cache_dir=str(ws.root / "cache-input-bench"))
    data_dir = ws.data_dir  # generated here, outside the timed build
    with Stopwatch() as build:
        dataset, cache = load_data(data_dir, build_config, progress=False)  # cold: what preprocess pays once
    split = dataset.splits["train"]

    def aigc_epoch(augment):
        ds = train_dataset(cache.images("train"), split.labels, dataset.num_classes, config.data, augment,
                           config.train.seed)
        return lambda: sum(len(x) for x, _ in ds)

    seed_flow = idg_flow(class_folders(split, ws.root / "idg-view"), config)
    variants = {"aigc": aigc_epoch(config.augment), "idg": lambda: idg_epoch(seed_flow),
                "aigc_no_augmentation": aigc_epoch(AugmentConfig())}
    variants["aigc"]()  # warm-up: tf.data and the augmenter trace their graphs in the first epoch
    timings = interleaved(variants, ws.sizes.repeats)
    rates = {name: len(split) / timings.best(name) for name in variants}
    built = sum(len(s) for s in dataset.splits.values())
    figure = Figure("input_pipeline", "Input pipeline: aigc (cache + ResNet20 augmentation) / ImageDataGenerator",
                    rates["aigc"] / rates["idg"], TARGET, "higher",
                    detail=f"({rates['aigc']:.0f} vs {rates['idg']:.0f} images/s)")
    notes = [(f"cache build, one-off (decode + validate + hash): {built / build.seconds:.0f} images/s "
              f"({built} images in {build.seconds:.1f} s)"),
             f"aigc epoch without augmentation (cache reads only): {rates['aigc_no_augmentation']:.0f} images/s"]
    return Result("input_pipeline", [figure], {
        "images_per_second": rates, **timings.to_dict(), "train_images": len(split),
        "cache_build": {"images": built, "seconds": build.seconds, "images_per_second": built / build.seconds},
    }, notes)


def class_folders(split, root: Path) -> Path:
    """`root/<label>/<file>` hard links to the split's own PNGs: the layout flow_from_directory reads."""
    for path, label in zip(split.paths, split.labels, strict=True):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, folder / path.name)
        except OSError:  # another filesystem: a symlink still reads the same file
            (folder / path.name).symlink_to(path)
    return root


def idg_options(augment: AugmentConfig) -> dict:
    """aigc's augment section in ImageDataGenerator's words (the same numbers, by design)."""
    return {"rotation_range": augment.rotation, "width_shift_range": augment.width_shift,
            "height_shift_range": augment.height_shift, "shear_range": augment.shear, "zoom_range": augment.zoom,
            "brightness_range": list(augment.brightness) if augment.brightness else None,
            "horizontal_flip": augment.horizontal_flip, "vertical_flip": augment.vertical_flip,
            "channel_shift_range": augment.channel_shift}


def idg_flow(folder: Path, config):
    """The seed's generator: rescale 1/255 plus the augmentation, flow_from_directory, batch and seed."""
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        raise Skip("tf_keras is not installed: make bench installs it "
                   "(pip install --no-deps tf-keras==2.21.0)") from None
    generator = ImageDataGenerator(rescale=1 / 255, **idg_options(config.augment))
    size = config.data.image_size
    return generator.flow_from_directory(str(folder), target_size=(size, size), batch_size=config.data.batch_size,
                                         class_mode="categorical", seed=config.train.seed)


def idg_epoch(flow) -> int:
    """One pass over the generator, as model.fit would draw it; returns the images seen."""
    return sum(len(next(flow)[0]) for _ in range(len(flow)))

