"""Synthetic gic datasets for the benchmarks: aigc's own generator, run on every core, merged.

`make_dataset` is single-threaded (~450 images/s here), so a large set is made in
parallel parts with different seeds and merged into one competition folder.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from aigc.data.csv_io import write_csv_atomic
from aigc.data.layouts import LAYOUTS
from aigc.data.synthetic import make_dataset

LAYOUT = LAYOUTS["gic"]


def generate(out: Path, classes: int, per_class: int, val_per_class: int, test_per_class: int,
             size: int = 64, parts: int = 0) -> Path:
    """A gic folder with these images per class in train / val / test, made by `parts` processes."""
    parts = max(1, min(parts or os.cpu_count() or 1, per_class, val_per_class, test_per_class))
    shares = [_shares(n, parts) for n in (per_class, val_per_class, test_per_class)]
    folders = [out.with_name(f"{out.name}.part{i}") for i in range(parts)]
    # spawn, not fork: the parent may already hold TensorFlow's threads.
    with ProcessPoolExecutor(parts, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(make_dataset, folder, "gic", classes, shares[0][i], size, i, shares[1][i], shares[2][i])
                for i, folder in enumerate(folders)]
        for job in jobs:
            job.result()
    return _merge(folders, out)


def _shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal counts."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _merge(parts: list[Path], out: Path) -> Path:
    """Move every part's images into `out` and concatenate their CSVs (ids are uuids: no clashes)."""
    for split, csv_name in LAYOUT.csv_names.items():
        images = out / LAYOUT.image_dirs[split]
        images.mkdir(parents=True, exist_ok=True)
        header, rows = None, []
        for part in parts:
            header, part_rows = _read_rows(part / csv_name)
            rows += part_rows
            for file in (part / LAYOUT.image_dirs[split]).iterdir():
                file.rename(images / file.name)
        write_csv_atomic(out / csv_name, header, rows)
    for part in parts:
        shutil.rmtree(part)  # only emptied folders and the part CSVs are left
    return out


def subset(full: Path, out: Path, fraction: float) -> Path:
    """The first `fraction` of every split of `full`, its image folders linked, not copied."""
    out.mkdir(parents=True, exist_ok=True)
    for split, csv_name in LAYOUT.csv_names.items():
        header, rows = _read_rows(full / csv_name)
        write_csv_atomic(out / csv_name, header, rows[:max(1, round(len(rows) * fraction))])
        (out / LAYOUT.image_dirs[split]).symlink_to(full / LAYOUT.image_dirs[split], target_is_directory=True)
    return out


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows

