"""Figures and tables describing a dataset (no MLflow here: preprocess logs them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aigc import pages
from aigc.data.cache import Cache
from aigc.data.layouts import Dataset
from aigc.figures import class_counts_figure, thumbnails


def class_distribution_figure(dataset: Dataset, report: dict):
    """Images per class, one bar group per labelled split."""
    return class_counts_figure(report["class_counts"], dataset.class_names, "class distribution")


def sample_grid(dataset: Dataset, cache: Cache, seed: int = 0):
    """4 random training images, plus one per class when there are at most 20 classes."""
    split = dataset.splits["train"]
    images, rng = cache.images("train"), np.random.default_rng(seed)
    picks = [(int(i), "random") for i in rng.choice(len(split), size=min(4, len(split)), replace=False)]
    if dataset.num_classes <= 20:
        for label in range(dataset.num_classes):
            where = np.flatnonzero(split.labels == label)
            if len(where):
                picks.append((int(where[0]), f"class {dataset.class_names[label]}"))
    return thumbnails([images[index] for index, _ in picks],
                      [f"{title}\n{dataset.class_names[split.labels[index]]}" for index, title in picks],
                      columns=6, width=1.6, height=1.8, fontsize=7)


def summary_table(report: dict) -> pd.DataFrame:
    """Counts per split, original image modes and sizes, conversions."""
    rows = [("images", split, count) for split, count in report["counts"].items()]
    rows += [("mode", mode, count) for mode, count in report["modes"].items()]
    rows += [("size", size, count) for size, count in report["sizes"].items()]
    rows += [("converted_to_rgb", "all", report["converted_to_rgb"]), ("resized", "all", report["resized"])]
    return pd.DataFrame(rows, columns=["what", "value", "count"])


def duplicates_table(report: dict) -> pd.DataFrame:
    """Groups of byte-identical images, within and across splits."""
    rows = []
    for group, members in enumerate(report["duplicates"]):
        splits = sorted({m.split("/", 1)[0] for m in members})
        for member in members:
            split, image_id = member.split("/", 1)
            rows.append((group, split, image_id, "across splits" if len(splits) > 1 else "within split"))
    return pd.DataFrame(rows, columns=["group", "split", "id", "kind"])


def near_duplicates_table(groups: list[list[str]]) -> pd.DataFrame:
    """Groups of near-duplicate images (perceptual hashes a few bits apart), within and across splits."""
    return duplicates_table({"duplicates": groups})


GALLERY_GROUPS = 200  # groups shown in the near-duplicate gallery (the table lists all)


def near_duplicates_gallery(groups: list[list[str]], dataset: Dataset, cache: Cache, distance: int) -> str:
    """Self-contained HTML: each near-duplicate group's images side by side, groups across splits first."""
    rows = {name: {image_id: n for n, image_id in enumerate(split.ids)} for name, split in dataset.splits.items()}
    ordered = sorted(groups, key=lambda g: len({k.split("/", 1)[0] for k in g}) == 1)
    sections = []
    for number, group in enumerate(ordered[:GALLERY_GROUPS]):
        items = []
        for key in group:
            split, image_id = key.split("/", 1)
            items.append((np.asarray(cache.images(split)[rows[split][image_id]]), key))
        splits = sorted({k.split("/", 1)[0] for k in group})
        sections.append((f"group {number}: {' + '.join(splits)}", items))
    return pages.gallery_html("Near-duplicate groups", sections,
                              f"{len(groups)} groups of images whose perceptual hashes differ in at most {distance} "
                              f"of 64 bits; groups joining splits (leaks) first; at most {GALLERY_GROUPS} shown.")
