"""Label-audit fixes applied when a dataset is read: drop rows (data.exclude_ids), relabel rows (data.relabel).

Both are CSVs keyed by `id` (the ids `aigc audit labels` reports); they touch train and
validation only (test has no labels). The rows change, so the cache and its digest do too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from aigc.data.layouts import Dataset, Split
from aigc.errors import UserError, first_rows, short

LABELLED = ("train", "val")


def apply_fixes(dataset: Dataset, exclude_ids: str = "", relabel: str = "") -> Dataset:
    """The dataset without the excluded rows and with the relabelled ones; unchanged when both are ""."""
    if not exclude_ids and not relabel:
        return dataset
    known = {image_id for name in LABELLED if name in dataset.splits for image_id in dataset.splits[name].ids}
    drop = set(_read(exclude_ids, ["id"], known)["id"]) if exclude_ids else set()
    new_labels = {}
    if relabel:
        frame = _read(relabel, ["id", "label"], known)
        names = {str(name): n for n, name in enumerate(dataset.class_names)}
        unknown = [f"row {n + 2}: {label!r}" for n, label in enumerate(frame["label"]) if str(label) not in names]
        if unknown:
            raise UserError(f"{relabel}: labels that are not classes of this dataset: {first_rows(unknown)}; "
                            f"the classes are {first_rows(dataset.class_names)}")
        new_labels = {image_id: names[str(label)] for image_id, label in zip(frame["id"], frame["label"])}
    splits = {name: _fixed(split, drop, new_labels) if name in LABELLED else split
              for name, split in dataset.splits.items()}
    return dataclasses.replace(dataset, splits=splits)


def fix_tags(exclude_ids: str = "", relabel: str = "") -> dict[str, str]:
    """Run tags naming the fix files used and their content hash (the path alone may be rewritten)."""
    return {f"aigc.{key}": f"{Path(path).resolve()}#{hashlib.blake2b(Path(path).read_bytes(), digest_size=6).hexdigest()}"
            for key, path in (("exclude_ids", exclude_ids), ("relabel", relabel)) if path}


def _read(path: str, columns: list[str], known: set[str]) -> pd.DataFrame:
    """The fix file's rows (its size was checked against data.max_table_bytes when the config loaded);
    messages quote a short prefix of what is wrong, never a whole hostile "column name"."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a readable CSV ({' '.join(str(error).split())[:200]}); it needs the columns "
                        f"{', '.join(columns)}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: no {', '.join(missing)} column (it has {first_rows(map(short, frame.columns))}); "
                        f"it needs {', '.join(columns)}")
    strangers = [f"row {n + 2}: {short(image_id)}" for n, image_id in enumerate(frame["id"]) if image_id not in known]
    if strangers:
        raise UserError(f"{path}: ids that are not train or validation images of this dataset: "
                        f"{first_rows(strangers)}; remove those rows (a fix file belongs to one dataset)")
    return frame


def _fixed(split: Split, drop: set[str], new_labels: dict[str, int]) -> Split:
    keep = [n for n, image_id in enumerate(split.ids) if image_id not in drop]
    if not keep:
        raise UserError(f"the fixes leave no {split.name} images; exclude fewer ids")
    labels = np.array([new_labels.get(split.ids[n], split.labels[n]) for n in keep], dtype=np.int64)
    return Split(split.name, tuple(split.ids[n] for n in keep), tuple(split.paths[n] for n in keep), labels,
                 split.source)
