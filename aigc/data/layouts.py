"""Competition folder layouts: where the CSVs and images are, and the submission format.

A layout reads a folder into `Split`s (ids, image paths, labels) and writes a
submission in its competition's exact format. The cheap checks (CSV present,
columns, labels, ids, images exist, empty split) happen here, at read time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from aigc.config import DataConfig
from aigc.data.csv_io import csv_header, read_csv, write_csv_atomic
from aigc.errors import UserError, first_rows, short

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_ID_CHARS = 200  # an id is a file name (the system's limit is 255 bytes, with the layout's suffix)
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"  # the project's experiment YAMLs


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
    max_table_bytes: int = DataConfig.max_table_bytes  # the cap its CSVs were read with: the submission's too

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
    other_csvs: tuple[str, ...] = ()  # further files of the competition, not required to read it
    configs: dict[str, str] = {}  # step (train | tune) -> the YAML in configs/ used when none is given

    def marks(self, root: Path) -> list[str]:
        """What in `root` belongs to this layout alone: its own files and folders, its id column."""
        others = [layout for layout in LAYOUTS.values() if layout is not self]
        shared = {name for layout in others for name in (*layout.csv_names.values(), *layout.other_csvs)}
        shared |= {folder for layout in others for folder in layout.image_dirs.values()}
        found = [n for n in (*self.csv_names.values(), *self.other_csvs) if n not in shared and (root / n).is_file()]
        found += [f"{d}/" for d in self.image_dirs.values() if d not in shared and (root / d).is_dir()]
        for name in sorted(shared & {*self.csv_names.values(), *self.other_csvs}):
            if (root / name).is_file() and self.id_column in csv_header(root / name):
                found.append(f"{name} column {self.id_column!r}")
        return found

    def read(self, root: Path, num_classes: int = 0, val_fraction: float = 0.1,
             max_table_bytes: int = DataConfig.max_table_bytes) -> Dataset:
        splits = {}
        for split, csv_name in self.csv_names.items():
            labelled = split != "test"
            ids, labels = read_csv(root / csv_name, self.id_column, self.label_column if labelled else None,
                                   max_table_bytes)
            splits[split] = self._split(root, split, ids, labels)
        num_classes = check_labels(splits, num_classes)
        return Dataset(root, self, splits, num_classes, tuple(str(i) for i in range(num_classes)), max_table_bytes)

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
    configs = {"train": "resnet20.yaml", "tune": "cnn_tune.yaml"}  # the seed's best model and its search


class DeepfakeLayout(Layout):
    """deepfake-classification-unibuc: `image_id,label`, ids without .png, sample submission order."""

    name = "deepfake"
    id_column, label_column = "image_id", "label"
    csv_names = {"train": "train.csv", "val": "validation.csv", "test": "test.csv"}
    image_dirs = {"train": "train", "val": "validation", "test": "test"}
    sample_submission = "sample_submission.csv"
    other_csvs = (sample_submission,)
    configs = {"train": "deepfake_attempt6.yaml", "tune": "deepfake_tune.yaml"}  # the report's final model

    def image_path(self, root, split, image_id):
        return root / self.image_dirs[split] / f"{image_id}.png"

    def read(self, root, num_classes=0, val_fraction=0.1, max_table_bytes=DataConfig.max_table_bytes):
        dataset = super().read(root, num_classes, val_fraction, max_table_bytes)
        self.submission_ids(dataset)  # test ids must match the sample submission
        return dataset

    def submission_ids(self, dataset):
        sample = dataset.root / self.sample_submission
        test_ids = dataset.splits["test"].ids
        if not sample.is_file():
            return test_ids
        ids, _ = read_csv(sample, self.id_column, None, dataset.max_table_bytes)
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
    image_dirs = {"test": "test"}  # only the unlabelled images have a fixed folder
    configs = {"train": "folders.yaml", "tune": "folders_tune.yaml"}

    def class_dirs(self, root: Path) -> list[Path]:
        """Every visible subfolder but test/: each is a class."""
        return sorted(_utf8_name(p) for p in root.iterdir()
                      if p.is_dir() and p.name != "test" and not p.name.startswith("."))

    def read(self, root, num_classes=0, val_fraction=0.1, max_table_bytes=DataConfig.max_table_bytes):
        class_dirs = self.class_dirs(root)  # no CSVs: max_table_bytes has nothing to cap
        if not class_dirs:
            raise UserError(f"{root}: no class folders found; expected DIR/<class>/*.png")
        if num_classes and num_classes != len(class_dirs):
            raise UserError(f"{root}: data.num_classes is {num_classes} but the folder has {len(class_dirs)} class "
                            f"folders ({first_rows(p.name for p in class_dirs)}); fix one of them")
        loose = _images_in(root)
        if loose:
            raise UserError(f"{root}: {len(loose)} images lie outside any class folder ({first_rows(p.name for p in loose)}); "
                            "move them into DIR/<class>/ (labelled) or DIR/test/ (unlabelled)")
        entries = {"train": [], "val": []}
        for label, class_dir in enumerate(class_dirs):
            images = _images_in(class_dir)
            if not images:
                raise UserError(f"{class_dir}: class folder without images ({', '.join(IMAGE_SUFFIXES)}); "
                                "add its images or remove the folder")
            for path in images:
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
CSV_LAYOUTS = [layout for layout in LAYOUTS.values() if layout.csv_names]
FOLDERS = LAYOUTS["folders"]


def open_dataset(root: str | Path, layout: str = "auto", num_classes: int = 0, val_fraction: float = 0.1,
                 max_table_bytes: int = DataConfig.max_table_bytes) -> Dataset:
    """Read a dataset folder, detecting its layout unless one is forced (which must not contradict detection).

    A CSV over `max_table_bytes` (data.max_table_bytes) is refused before it is read."""
    root = data_folder(root)
    if layout == "auto":
        found = detect_layout(root)
    elif layout in LAYOUTS:
        found = LAYOUTS[layout]
        _check_forced(root, found)
    else:
        raise UserError(f"data.layout: unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
    return found.read(root, num_classes, val_fraction, max_table_bytes)


# --- detection: one layout, or a refusal that says why ------------------------

def detect_layout(root: str | Path) -> Layout:
    """The layout `root` is in. Never a guess: an incomplete or ambiguous folder is refused (UserError).

    Exactly one competition may claim the folder (by its own file and folder names and its
    id column); then all its CSVs must be there, and no other folder of images beside them.
    Unclaimed: class folders of images (a folder named like a competition's image folder is
    a claim, so deepfake's train/ and validation/ never become classes by accident).
    """
    root = data_folder(root)
    claims = {layout: layout.marks(root) for layout in CSV_LAYOUTS}
    claims = {layout: marks for layout, marks in claims.items() if marks}
    competition_files = sorted({n for l in CSV_LAYOUTS for n in (*l.csv_names.values(), *l.other_csvs)
                                if (root / n).is_file()})
    if len(claims) > 1:
        both = " and ".join(f"the {layout.name} layout ({', '.join(marks)})" for layout, marks in claims.items())
        raise UserError(f"{root}: matches both {both}; keep one competition's files in a folder "
                        "(or set data.layout to say which)")
    if claims:
        (layout, marks), = claims.items()
        missing = [n for n in layout.csv_names.values() if not (root / n).is_file()]
        if missing:
            # only its image folders: perhaps classes that happen to share their names
            classes = "" if competition_files else " (or, if those folders really are classes, set data.layout=folders)"
            raise UserError(f"{root}: looks like the {layout.name} layout ({', '.join(marks)}) but "
                            f"{', '.join(missing)} not found; the folder must hold "
                            f"{', '.join(layout.csv_names.values())}: copy the competition's files in full{classes}")
        strays = [f"{p.name}/" for p in _image_folders(root) if p.name not in layout.image_dirs.values()]
        if strays:
            raise UserError(f"{root}: holds the {layout.name} layout's CSVs and also folders of images no CSV "
                            f"names ({first_rows(strays)}); move those out (or set data.layout to say which)")
        return layout
    if competition_files:
        raise UserError(f"{root}: has {', '.join(competition_files)} but no other sign of a competition: "
                        f"expected {_expected()}")
    if any(_has_images(p) for p in FOLDERS.class_dirs(root)):
        return FOLDERS
    raise UserError(f"{root}: layout not recognised: expected {_expected()}; set data.layout to force one")


def _check_forced(root: Path, forced: Layout) -> None:
    """A forced layout that another one's files contradict: say which it looks like and which configs fit."""
    try:
        detected = detect_layout(root)
    except UserError:
        return  # nothing identified for sure: the forced layout's own checks speak
    if detected is forced:
        return
    fitting = configs_for(detected.name)
    configs = f"configs that fit it: {', '.join(fitting)}; " if fitting else ""
    marks = ", ".join(detected.marks(root)) or "class folders " + first_rows(p.name for p in FOLDERS.class_dirs(root))
    raise UserError(f"{root}: data.layout is {forced.name} but the folder looks like the {detected.name} layout "
                    f"({marks}); {configs}or set data.layout={detected.name} (or auto)")


def configs_for(layout: str) -> list[str]:
    """The shipped configs (configs/*.yaml) that pin `layout`, its default first."""
    default = LAYOUTS[layout].configs.get("train")
    found = []
    for path in sorted(CONFIGS_DIR.glob("*.yaml")):
        try:
            pinned = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("layout")
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # a broken config is its own error when used; here it just fits nothing
        if pinned == layout:
            found.append(f"configs/{path.name}")
    return sorted(found, key=lambda name: name != f"configs/{default}")


def default_config(data_dir: str | Path, step: str = "train") -> Path:
    """The experiment YAML for a folder when the user names none: its detected layout's default model."""
    layout = detect_layout(data_dir)
    return CONFIGS_DIR / layout.configs[step]


def data_folder(root) -> Path:
    """`root` as a Path if it is a folder; else the one message that says to pass one."""
    root = Path(root)
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"data folder {root} {state}: pass -P data=DIR with a competition folder")
    return root


def _expected() -> str:
    csvs = "; ".join(f"{', '.join(l.csv_names.values())} ({l.name})" for l in CSV_LAYOUTS)
    return f"{csvs}; or one folder of images per class (folders)"


def _image_folders(root: Path) -> list[Path]:
    return [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and _has_images(p)]


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


# --- checks shared by the CSV layouts -----------------------------------------

def check_ids(source: Path, ids):
    unsafe = [f"line {n + 2} ({short(i)})" for n, i in enumerate(ids)
              if not i or "/" in i or "\\" in i or ".." in i or len(i) > MAX_ID_CHARS]
    if unsafe:
        raise UserError(f"{source}: unsafe or empty id at {first_rows(unsafe)}; ids must be plain file names "
                        f"(at most {MAX_ID_CHARS} characters)")
    seen, duplicates = set(), []
    for n, image_id in enumerate(ids):
        if image_id in seen:
            duplicates.append(f"line {n + 2} ({short(image_id)})")
        seen.add(image_id)
    if duplicates:
        raise UserError(f"{source}: duplicate id at {first_rows(duplicates)}; each image must appear once")


def check_files_exist(source: Path, ids, paths):
    missing = [f"{i} ({p})" for i, p in zip(ids, paths) if not p.is_file()]
    if missing:
        raise UserError(f"{source}: {len(missing)} referenced images are missing: {first_rows(missing)}")


def check_labels(splits: dict[str, Split], num_classes: int) -> int:
    """Every split non-empty; labels within [0, num_classes); returns num_classes.

    Without data.num_classes the classes are the training labels 0..max: a class that no
    training image has (a gap, or a label only val uses) is refused, not silently added.
    """
    for split in splits.values():
        if not len(split):
            raise UserError(f"{split.source}: the {split.name} split is empty; it needs at least one image")
    labelled = [s for s in splits.values() if s.labels is not None]
    if not num_classes:
        num_classes = _training_classes(splits["train"], labelled)
    for split in labelled:
        bad = [f"line {n + 2} ({v})" for n, v in enumerate(split.labels) if not 0 <= v < num_classes]
        if bad:
            raise UserError(
                f"{split.source}: label out of range 0..{num_classes - 1} at {first_rows(bad)}; "
                "fix the rows or set data.num_classes"
            )
    return num_classes


def _training_classes(train: Split, labelled: list[Split]) -> int:
    """0..max of the training labels, each of which must have a training image."""
    seen = set(train.labels.tolist())
    count = int(train.labels.max()) + 1
    gaps = [label for label in range(count) if label not in seen]
    if gaps:
        raise UserError(f"{train.source}: no training image has label {first_rows(gaps)} (labels run 0..{count - 1}); "
                        "fix the labels, or set data.num_classes to keep classes without images")
    for split in labelled:
        bad = [f"line {n + 2} (label {v})" for n, v in enumerate(split.labels) if v not in seen and v >= 0]
        if bad:
            raise UserError(f"{split.source}: a label that is not a training class at {first_rows(bad)}: "
                            f"{train.source.name} has labels 0..{count - 1}; fix the rows, or set "
                            "data.num_classes to allow classes without training images")
    return count


def _labels_or_none(split):
    return split.labels if split.labels is not None else [None] * len(split)


def _images_in(folder: Path) -> list[Path]:
    return sorted(_utf8_name(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _utf8_name(path: Path) -> Path:
    """A file name is an id (and goes into hashes and CSVs): its bytes must be UTF-8."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode kept the undecodable bytes as surrogates
        raise UserError(f"{ascii(str(path))}: the file name is not valid UTF-8; rename it") from None
    return path


def holdout_bucket(image_id: str) -> float:
    """Stable pseudo-random number in [0, 1) from an id: the same val split on every machine."""
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "big") / 2**64
