"""The synthetic generator writes each competition layout exactly, deterministically by seed."""

import csv

import numpy as np
import pytest
from PIL import Image

from aigc.data.layouts import open_dataset
from aigc.data.synthetic import MAX_CLASSES, class_parts, make_dataset, render

LAYOUT_NAMES = ("gic", "deepfake", "folders")
# The competitions' exact headers (DATA.md), spelled out rather than read from the layouts.
HEADERS = {
    "gic": {"train.csv": "Image,Class", "val.csv": "Image,Class", "test.csv": "Image"},
    "deepfake": {"train.csv": "image_id,label", "validation.csv": "image_id,label",
                 "test.csv": "image_id", "sample_submission.csv": "image_id,label"},
    "folders": {},
}
SMALL = {"classes": 3, "per_class": 4, "size": 32}  # val and test default to 2 per class


def first_line(path):
    return path.read_text().splitlines()[0]


def files_of(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_reads_back_as_its_layout(tmp_path, layout):
    out = make_dataset(tmp_path / "d", layout, seed=1, **SMALL)
    dataset = open_dataset(out)  # auto-detect
    assert dataset.layout.name == layout
    assert dataset.num_classes == 3
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 12, "val": 6, "test": 6}
    for name in ("train", "val"):
        labels = dataset.splits[name].labels
        assert labels.min() >= 0 and labels.max() < 3
        assert np.bincount(labels, minlength=3).tolist() == ([4] * 3 if name == "train" else [2] * 3)
    for name, header in HEADERS[layout].items():
        assert first_line(out / name) == header
    with Image.open(dataset.splits["test"].paths[0]) as image:
        assert image.mode == "RGB" and image.size == (32, 32)


def test_id_spelling_per_layout(tmp_path):
    gic = open_dataset(make_dataset(tmp_path / "g", "gic", **SMALL))
    assert all(i.endswith(".png") and len(i) == 40 for i in gic.splits["train"].ids)
    deepfake = open_dataset(make_dataset(tmp_path / "d", "deepfake", **SMALL))
    assert all(len(i) == 36 and "." not in i for i in deepfake.splits["test"].ids)
    folders = open_dataset(make_dataset(tmp_path / "f", "folders", **SMALL))
    assert folders.class_names == ("class_00", "class_01", "class_02")
    assert all(p.parent.name == "test" for p in folders.splits["test"].paths)


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_deterministic_by_seed(tmp_path, layout):
    first = files_of(make_dataset(tmp_path / "a", layout, seed=7, **SMALL))
    second = files_of(make_dataset(tmp_path / "b", layout, seed=7, **SMALL))
    assert first == second  # same names, same CSV and PNG bytes
    other = files_of(make_dataset(tmp_path / "c", layout, seed=8, **SMALL))
    assert set(other) != set(first)
    assert sorted(other.values()) != sorted(first.values())


def test_deepfake_sample_submission(tmp_path):
    out = make_dataset(tmp_path / "d", "deepfake", **SMALL)
    with (out / "test.csv").open() as handle:
        test_ids = [row["image_id"] for row in csv.DictReader(handle)]
    with (out / "sample_submission.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    sample_ids = [row["image_id"] for row in rows]
    assert set(sample_ids) == set(test_ids) and len(sample_ids) == len(test_ids)
    assert sample_ids != test_ids  # submissions must follow the sample's order, not test.csv's
    assert {row["label"] for row in rows} == {"0"}


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_dataset(tmp_path / "d", "gic", **SMALL)
    with pytest.raises(ValueError):
        make_dataset(tmp_path / "e", "kaggle", **SMALL)


def test_render_image_and_classes():
    image = render(5, 10, 48, np.random.default_rng(0))
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert np.array_equal(image, render(5, 10, 48, np.random.default_rng(0)))
    assert image.std() > 10  # not a flat image
    assert len({class_parts(label) for label in range(MAX_CLASSES)}) == MAX_CLASSES  # gic's 100 fit
    with pytest.raises(ValueError):
        render(10, 10, 48, np.random.default_rng(0))
