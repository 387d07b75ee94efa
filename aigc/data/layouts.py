"""Competition folder layouts: where the CSVs and images are, and the submission format.

A layout reads a folder into `Split`s (ids, image paths, labels) and writes a
submission in its competition's exact format. The cheap checks (CSV present,
columns, labels, ids, images exist, empty split) happen here, at read time.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigc.errors import UserError, first_rows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Split:
    """One split of a dataset: ids as the competition spells them, their files, labels."""

    name: str  # train | val | test
    ids: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray | None  # int64, None for test
    source: Path  # the CSV (or folder) it was read from, for messages

    def __len__(self):
        return len(self.ids)

    def head(self, limit: int) -> "Split":
        """The first `limit` images (all when limit is 0): smoke runs."""
        if not limit or limit >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:limit]
        return Split(self.name, self.ids[:limit], self.paths[:limit], labels, self.source)


@dataclass(frozen=True)
class Dataset:
    root: Path
    layout: "Layout"
    splits: dict[str, Split]  # train, val, and test when present
    num_classes: int
    class_names: tuple[str, ...]

    def fingerprint(self) -> str:
        """Cheap key of what is on disk (ids, sizes, mtimes): finds the decoded cache."""
        digest = hashlib.blake2b(digest_size=12)
        digest.update(self.layout.name.encode())
        for split in self.splits.values():
            for image_id, path, label in zip(split.ids, split.paths, _labels_or_none(split)):
                stat = path.stat()
                digest.update(f"{split.name}|{image_id}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


class Layout:
    """A competition's file layout. Subclasses fill in the names."""

    name = ""
    id_column = label_column = ""
    csv_names: dict[str, str] = {}  # split -> CSV file name
    image_dirs: dict[str, str] = {}  # split -> folder of images

    def detect(self, root: Path) -> bool:
        return all((root / name).is_file() for name in self.csv_names.values())

    def read(self, root: Path, num_classes: int = 0, val_fraction: float = 0.1) -> Dataset:
        splits = {}
        for split, csv_name in self.csv_names.items():
            labelled = split != "test"
            ids, labels = read_csv(root / csv_name, self.id_column, self.label_column if labelled else None)
            splits[split] = self._split(root, split, ids, labels)
        num_classes = check_labels(splits, num_classes)
        return Dataset(root, self, splits, num_classes, tuple(str(i) for i in range(num_classes)))

    def image_path(self, root: Path, split: str, image_id: str) -> Path:
        return root / self.image_dirs[split] / image_id

    def _split(self, root, split, ids, labels) -> Split:
        source = root / self.csv_names[split]
        check_ids(source, ids)
        paths = tuple(self.image_path(root, split, image_id) for image_id in ids)
        check_files_exist(source, ids, paths)
        return Split(split, tuple(ids), paths, labels, source)

    # --- submissions -------------------------------------------------------
    def submission_ids(self, dataset: Dataset) -> tuple[str, ...]:
        """Test ids in the order the competition wants the rows."""
        return dataset.splits["test"].ids

    def submission_header(self) -> tuple[str, str]:
        return (self.id_column, self.label_column)

    def format_label(self, dataset: Dataset, label: int) -> str:
        return str(int(label))

    def write_submission(self, dataset: Dataset, predictions: dict[str, int], out: Path) -> Path:
        """Write `id -> class` in the competition's format, checked, atomically."""
        ids = self.submission_ids(dataset)
        missing = [i for i in ids if i not in predictions]
        if missing or len(predictions) != len(ids):
            raise ValueError(f"submission would miss {len(missing)} test ids: {first_rows(missing)}")
        rows = [(image_id, self.format_label(dataset, predictions[image_id])) for image_id in ids]
        return write_csv_atomic(out, self.submission_header(), rows)


class GicLayout(Layout):
    """gic-unibuc-dl-2023: `Image,Class`, file names with .png, `*_images/` folders."""

    name = "gic"
    id_column, label_column = "Image", "Class"
    csv_names = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
    image_dirs = {"train": "train_images", "val": "val_images", "test": "test_images"}


class DeepfakeLayout(Layout):
    """deepfake-classification-unibuc: `image_id,label`, ids without .png, sample submission order."""

    name = "deepfake"
    id_column, label_column = "image_id", "label"
    csv_names = {"train": "train.csv", "val": "validation.csv", "test": "test.csv"}
    image_dirs = {"train": "train", "val": "validation", "test": "test"}
    sample_submission = "sample_submission.csv"

    def image_path(self, root, split, image_id):
        return root / self.image_dirs[split] / f"{image_id}.png"

    def read(self, root, num_classes=0, val_fraction=0.1):
        dataset = super().read(root, num_classes, val_fraction)
        self.submission_ids(dataset)  # test ids must match the sample submission
        return dataset

    def submission_ids(self, dataset):
        sample = dataset.root / self.sample_submission
        test_ids = dataset.splits["test"].ids
        if not sample.is_file():
            return test_ids
        ids, _ = read_csv(sample, self.id_column, None)
        extra, absent = sorted(set(ids) - set(test_ids)), sorted(set(test_ids) - set(ids))
        if extra or absent or len(ids) != len(test_ids):
            raise UserError(
                f"{sample}: ids do not match {dataset.splits['test'].source}: "
                f"{len(extra)} only in the sample submission ({first_rows(extra)}), "
                f"{len(absent)} only in test.csv ({first_rows(absent)}); use the competition's original files"
            )
        return tuple(ids)


class FoldersLayout(Layout):
    """DIR/<class>/*.png, optional DIR/test/ of unlabelled images; val held out by hash of id."""

    name = "folders"
    id_column, label_column = "image", "label"

    def detect(self, root):
        return any(p.is_dir() and p.name != "test" and not p.name.startswith(".") for p in root.iterdir())

    def read(self, root, num_classes=0, val_fraction=0.1):
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "test" and not p.name.startswith("."))
        if not class_dirs:
            raise UserError(f"{root}: no class folders found; expected DIR/<class>/*.png")
        entries = {"train": [], "val": []}
        for label, class_dir in enumerate(class_dirs):
            for path in _images_in(class_dir):
                image_id = f"{class_dir.name}/{path.name}"
                entries["val" if holdout_bucket(image_id) < val_fraction else "train"].append((image_id, path, label))
        splits = {
            name: Split(name, tuple(e[0] for e in rows), tuple(e[1] for e in rows),
                        np.array([e[2] for e in rows], dtype=np.int64), root)
            for name, rows in entries.items()
        }
        if (root / "test").is_dir():
            paths = tuple(_images_in(root / "test"))
            splits["test"] = Split("test", tuple(p.name for p in paths), paths, None, root / "test")
        check_labels(splits, len(class_dirs))
        return Dataset(root, self, splits, len(class_dirs), tuple(p.name for p in class_dirs))

    def format_label(self, dataset, label):
        return dataset.class_names[int(label)]


LAYOUTS = {layout.name: layout for layout in (GicLayout(), DeepfakeLayout(), FoldersLayout())}


def open_dataset(root: str | Path, layout: str = "auto", num_classes: int = 0, val_fraction: float = 0.1) -> Dataset:
    """Read a dataset folder, detecting its layout unless one is forced."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist: pass -P data=DIR with a competition folder")
    if layout == "auto":
        found = next((l for l in LAYOUTS.values() if l.detect(root)), None)
        if found is None:
            raise UserError(
                f"{root}: layout not recognised: expected train.csv/val.csv/test.csv (gic), "
                "train.csv/validation.csv/test.csv (deepfake) or one folder per class; "
                "set data.layout to force one"
            )
    elif layout in LAYOUTS:
        found = LAYOUTS[layout]
    else:
        raise UserError(f"data.layout: unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
    return found.read(root, num_classes, val_fraction)


# --- checks shared by the CSV layouts -----------------------------------------

def read_csv(path: Path, id_column: str, label_column: str | None):
    """Ids (str) and labels (int64 or None); every problem is named by file and line."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; the competition folder must contain it")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        needed = [id_column] + ([label_column] if label_column else [])
        for column in needed:
            if column not in columns:
                raise UserError(f"{path}: missing column {column!r} (found: {', '.join(columns) or 'none'})")
        rows = list(reader)
    ids = [row[id_column] or "" for row in rows]
    if label_column is None:
        return ids, None
    bad = [f"line {n + 2} ({row[label_column]!r})" for n, row in enumerate(rows) if not _is_int(row[label_column])]
    if bad:
        raise UserError(f"{path}: {label_column} is not an integer at {first_rows(bad)}; fix those rows")
    return ids, np.array([int(row[label_column]) for row in rows], dtype=np.int64)


def check_ids(source: Path, ids):
    unsafe = [f"line {n + 2} ({i!r})" for n, i in enumerate(ids) if not i or "/" in i or "\\" in i or ".." in i]
    if unsafe:
        raise UserError(f"{source}: unsafe or empty id at {first_rows(unsafe)}; ids must be plain file names")
    seen, duplicates = set(), []
    for n, image_id in enumerate(ids):
        if image_id in seen:
            duplicates.append(f"line {n + 2} ({image_id!r})")
        seen.add(image_id)
    if duplicates:
        raise UserError(f"{source}: duplicate id at {first_rows(duplicates)}; each image must appear once")


def check_files_exist(source: Path, ids, paths):
    missing = [f"{i} ({p})" for i, p in zip(ids, paths) if not p.is_file()]
    if missing:
        raise UserError(f"{source}: {len(missing)} referenced images are missing: {first_rows(missing)}")


def check_labels(splits: dict[str, Split], num_classes: int) -> int:
    """Every split non-empty; labels within [0, num_classes); returns num_classes."""
    for split in splits.values():
        if not len(split):
            raise UserError(f"{split.source}: the {split.name} split is empty; it needs at least one image")
    labelled = [s for s in splits.values() if s.labels is not None]
    if not num_classes:
        num_classes = int(max(s.labels.max() for s in labelled)) + 1
    for split in labelled:
        bad = [f"line {n + 2} ({v})" for n, v in enumerate(split.labels) if not 0 <= v < num_classes]
        if bad:
            raise UserError(
                f"{split.source}: label out of range 0..{num_classes - 1} at {first_rows(bad)}; "
                "fix the rows or set data.num_classes"
            )
    return num_classes


def write_csv_atomic(out: Path, header, rows) -> Path:
    """Write a CSV next to `out` and rename it into place: never a half-written file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _is_int(text) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", text or "") is not None


def _labels_or_none(split):
    return split.labels if split.labels is not None else [None] * len(split)


def _images_in(folder: Path):
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def holdout_bucket(image_id: str) -> float:
    """Stable pseudo-random number in [0, 1) from an id: the same val split on every machine."""
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "big") / 2**64
