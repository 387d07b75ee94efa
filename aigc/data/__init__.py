"""Data: competition layouts, validation, the decoded cache and tf.data pipelines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from aigc.config import DataConfig
from aigc.data.cache import Cache, Limits, build_cache
from aigc.data.layouts import Dataset, open_dataset


def load_data(data_dir: str | Path, data: DataConfig, progress: bool = True) -> tuple[Dataset, Cache]:
    """Read and check a dataset folder, then open (or build once) its decoded cache.

    `data.limit` shortens train and val only: a submission always needs every test id.
    A label audit's fixes (data.exclude_ids / data.relabel) are not applied here: they change only what
    a model trains on (aigc.data.fixes.read_fixes), never the rows that score it.
    """
    dataset = open_dataset(data_dir, data.layout, data.num_classes, data.val_fraction, data.max_table_bytes)
    if data.limit:
        splits = {name: split if name == "test" else split.head(data.limit) for name, split in dataset.splits.items()}
        dataset = dataclasses.replace(dataset, splits=splits)
    return dataset, build_cache(dataset, data.image_size, data.cache_dir, data.workers, progress,
                                Limits(data.max_image_bytes, data.max_image_pixels))
