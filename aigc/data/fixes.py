"""Label-audit fixes for the rows a model trains on: leave rows out (data.exclude_ids), relabel rows (data.relabel).

Both are CSVs keyed by `id` (the ids `aigc audit labels` reports, train or validation images).
They change only what a model learns from, never what scores it: a train run's validation
split and a cross-validation's out-of-fold rows keep their original labels (the fixes came from
an earlier model; scoring against them would grade a model by its predecessor's opinion, with the
hardest images removed). A training part's digest changes with them; the cache does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aigc.data.layouts import Dataset
from aigc.data.parts import Part
from aigc.errors import UserError, first_rows, short

LABELLED = ("train", "val")


@dataclass(frozen=True)
class Fixes:
    exclude: frozenset = frozenset()  # ids left out of training
    relabel: Mapping[str, int] = field(default_factory=dict)  # id -> the label it trains with

    def __bool__(self) -> bool:
        return bool(self.exclude or self.relabel)

    def training(self, part: Part) -> Part:
        """The part a model trains on: excluded rows left out, relabelled rows with their new label."""
        if not self:
            return part
        keep = [n for n, image_id in enumerate(part.ids) if image_id not in self.exclude]
        if not keep:
            raise UserError(f"the label fixes leave no {part.name} images to train on; exclude fewer ids")
        labels = [self.relabel.get(part.ids[n], part.labels[n]) for n in keep]
        return part.take(keep, f"{part.name}-fixed", labels)  # other rows, other labels: another dataset

    def labels(self, ids, labels) -> tuple[np.ndarray, np.ndarray]:
        """(rows kept, their fixed labels) of scored rows: the same rows judged by the fixed labels."""
        keep = np.array([n for n, image_id in enumerate(ids) if image_id not in self.exclude], dtype=np.int64)
        return keep, np.array([self.relabel.get(ids[n], labels[n]) for n in keep], dtype=np.int64)


def read_fixes(dataset: Dataset, exclude_ids: str = "", relabel: str = "") -> Fixes:
    """The fixes these files name (ids of the dataset's train or validation images); none when both are ""."""
    if not exclude_ids and not relabel:
        return Fixes()
    known = {image_id for name in LABELLED if name in dataset.splits for image_id in dataset.splits[name].ids}
    drop = frozenset(_read(exclude_ids, ["id"], known)["id"]) if exclude_ids else frozenset()
    new_labels = {}
    if relabel:
        frame = _read(relabel, ["id", "label"], known)
        names = {str(name): n for n, name in enumerate(dataset.class_names)}
        unknown = [f"row {n + 2}: {label!r}" for n, label in enumerate(frame["label"]) if str(label) not in names]
        if unknown:
            raise UserError(f"{relabel}: labels that are not classes of this dataset: {first_rows(unknown)}; "
                            f"the classes are {first_rows(dataset.class_names)}")
        new_labels = {image_id: names[str(label)] for image_id, label in zip(frame["id"], frame["label"])}
    return Fixes(drop, new_labels)


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
