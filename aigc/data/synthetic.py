"""Synthetic datasets in the competition layouts: smoke tests and demos without Kaggle data.

A class is a fixed (shape, texture, colour family) triple; position, scale, rotation,
colour jitter, background and noise are random, so a small CNN learns it but not instantly.
With `fingerprints`, a class is instead how its images were made, like the deepfake
competition's generators: any content, drawn at half size and upsampled by the class's own
resampling filter, so the label lives only in the fine pixel statistics.
"""

from __future__ import annotations

import colorsys
import csv
import functools
import io
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from aigc.data.csv_io import write_csv_atomic
from aigc.data.layouts import IMAGE_SUFFIXES, LAYOUTS, Layout, holdout_bucket

FLIPPED_IDS = "flipped_ids.csv"  # beside the data: the known truth the label audit is tested against
NEAR_DUPLICATES = "near_duplicates.csv"  # ...and the near-duplicate audit
EDITS = ("reencoded", "resized", "brightness")  # how a near-duplicate copy differs from its source

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent")
TEXTURES = ("solid", "stripes", "dots", "checker")
HUE_FAMILIES = 5  # centres 72 degrees apart
# 7, 4 and 5 are pairwise coprime, so label -> (label % 7, label % 4, label % 5) is
# one-to-one below 7*4*5 (Chinese remainder) and every attribute changes between labels.
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * HUE_FAMILIES
# FoldersLayout holds out val by a hash of "<class>/<file>" below this fraction
# (open_dataset's default); ids are drawn so that the hash puts them where we want.
FOLDERS_VAL_FRACTION = 0.1
TEST_DIR = "test"  # the unlabelled folder FoldersLayout looks for


def class_parts(label: int) -> tuple[str, str, int]:
    """The (shape, texture, hue family) of a class; the same for every seed."""
    return SHAPES[label % len(SHAPES)], TEXTURES[label % len(TEXTURES)], label % HUE_FAMILIES


def render(label: int, classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB image (uint8, size x size x 3) of class `label` out of `classes`."""
    if not 0 <= label < classes <= MAX_CLASSES:
        raise ValueError(f"label {label} out of range for {classes} classes (at most {MAX_CLASSES})")
    shape, texture, family = class_parts(label)
    yy, xx = _grid(size)

    # Object colour: jittered within its family; the pattern colour is a darker shade of
    # the same hue so the texture is visible without changing the colour family.
    hue = (family / HUE_FAMILIES + rng.uniform(-0.045, 0.045)) % 1.0
    sat, val = rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0)
    fg = _rgb(hue, sat, val)
    pattern = _rgb(hue, min(1.0, sat * rng.uniform(0.9, 1.2)), val * rng.uniform(0.3, 0.55))

    # Background: any hue, duller and darker than the object so it stays visible,
    # with a random linear ramp so a flat-colour shortcut does not work.
    bg = _rgb(rng.uniform(), rng.uniform(0.0, 0.7), rng.uniform(0.08, val - 0.25))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / size - 0.5
    image = bg + (ramp * rng.uniform(0, 90))[..., None]

    # A few small blobs of random colour: the class is the shape, not "some colour somewhere".
    clutter = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(clutter)
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = size * rng.uniform(0.03, 0.08, 2)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
        mask = np.asarray(clutter, dtype=np.float32)[..., None] / 255
        image = image * (1 - mask) + _rgb(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9)) * mask
        draw.rectangle((0, 0, size, size), fill=0)

    # The textured object, alpha-blended with an anti-aliased mask.
    radius = size * rng.uniform(0.2, 0.36)
    cx, cy = rng.uniform(radius * 0.9, size - radius * 0.9, 2)
    alpha = _shape_mask(shape, size, cx, cy, radius, rng.uniform(0, 2 * np.pi))[..., None]
    on = _texture(texture, xx, yy, size, rng)[..., None]
    obj = np.where(on, pattern, fg)
    image = image * (1 - alpha) + obj * alpha

    image += rng.normal(0, rng.uniform(3, 14), image.shape)  # sensor-like noise everywhere
    return np.clip(image, 0, 255).astype(np.uint8)


# A fingerprinted class's "generator": the filter that upsampled its images (each leaves its own traces
# between neighbouring pixels, as a generator's upsampling layers do; BOX doubles exactly as NEAREST does)
UPSAMPLERS = (Image.NEAREST, Image.BILINEAR, Image.BICUBIC, Image.LANCZOS, Image.HAMMING)
UPSCALE = 4  # content drawn at a quarter of the side: each filter leaves traces a small network finds in minutes
FINGERPRINT_NOISE = 1.5  # grey levels of noise after upsampling: the traces are faint, not clean


def render_fingerprinted(label: int, classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class `label` (< len(UPSAMPLERS)): any class's content at half size, upsampled by the
    label's filter, then a little noise."""
    if not 0 <= label < classes <= len(UPSAMPLERS):
        raise ValueError(f"label {label} out of range for {classes} fingerprinted classes (at most {len(UPSAMPLERS)})")
    content = render(int(rng.integers(MAX_CLASSES)), MAX_CLASSES, max(16, size // UPSCALE), rng)
    image = np.asarray(Image.fromarray(content).resize((size, size), UPSAMPLERS[label]), dtype=np.float32)
    return np.clip(image + rng.normal(0, FINGERPRINT_NOISE, image.shape), 0, 255).astype(np.uint8)


def make_dataset(out, layout: str = "gic", classes: int = 10, per_class: int = 20, size: int = 64,
                 seed: int = 0, val_per_class: int | None = None, test_per_class: int | None = None,
                 label_noise: float = 0.0, near_duplicates: int = 0, fingerprints: bool = False) -> Path:
    """Write a complete synthetic dataset in `layout` into `out` (empty or new); returns `out`.

    Byte-for-byte deterministic by seed. For folders, each class folder holds per_class +
    val_per_class images chosen so that the reader's hash hold-out gives exactly val_per_class.
    `label_noise`: this fraction of train and val rows get another (wrong) label, listed in
    flipped_ids.csv; `near_duplicates`: this many edited copies of train images placed in val
    and test, listed in near_duplicates.csv (csv layouts only: both files name rows by id);
    `fingerprints`: classes told apart by how the images were upsampled, not by what they show.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    most = len(UPSAMPLERS) if fingerprints else MAX_CLASSES
    if not 2 <= classes <= most:
        raise ValueError(f"classes must be 2..{most}{' with fingerprints' if fingerprints else ''}, got {classes}")
    if per_class < 1 or size < 16:
        raise ValueError(f"per_class must be >= 1 and size >= 16, got {per_class} and {size}")
    val_per_class = max(2, per_class // 5) if val_per_class is None else val_per_class
    test_per_class = max(2, per_class // 5) if test_per_class is None else test_per_class
    if val_per_class < 1 or test_per_class < 1:
        raise ValueError("val_per_class and test_per_class must be >= 1: the readers reject empty splits")
    if not 0 <= label_noise < 1 or near_duplicates < 0:
        raise ValueError(f"label_noise must be in [0, 1) and near_duplicates >= 0, got {label_noise} and {near_duplicates}")
    if (label_noise or near_duplicates) and layout == "folders":
        raise ValueError("label_noise and near_duplicates need a csv layout (gic or deepfake): a folders "
                         "dataset's label is its folder")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        # Leftover files would mix into the read-back (class folders, stale images).
        raise FileExistsError(f"{out} is not empty; pass a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)

    # Separate streams: ids and pixels do not shift each other when one side changes.
    # A third stream for the faults: a clean dataset is the same with or without them asked for.
    id_seq, pixel_seq, fault_seq = np.random.SeedSequence(seed).spawn(3)
    ids, pixels = np.random.default_rng(id_seq), np.random.default_rng(pixel_seq)
    counts = {"train": per_class, "val": val_per_class, "test": test_per_class}
    draw = render_fingerprinted if fingerprints else render
    if layout == "folders":
        _write_folders(out, classes, size, counts, ids, pixels, draw)
    else:
        _write_csv_layout(out, LAYOUTS[layout], classes, size, counts, ids, pixels, draw)
    faults = np.random.default_rng(fault_seq)
    if near_duplicates:  # before the flips: a copy's source keeps its true label
        _add_near_duplicates(out, LAYOUTS[layout], near_duplicates, faults)
    if label_noise:
        _flip_labels(out, LAYOUTS[layout], classes, label_noise, faults)
    return out


def _read_rows(out: Path, layout: Layout, split: str) -> list[list[str]]:
    with open(out / layout.csv_names[split], newline="") as f:
        return list(csv.reader(f))[1:]


def _flip_labels(out: Path, layout: Layout, classes: int, fraction: float, rng) -> None:
    """Give round(fraction * rows) train/val rows a different random label; list them in flipped_ids.csv."""
    flipped = []
    copied = _near_duplicate_ids(out)
    for split in ("train", "val"):
        rows = _read_rows(out, layout, split)
        # near-duplicates and their sources are left alone: a copy's label matches its source's
        candidates = [n for n, row in enumerate(rows) if row[0] not in copied]
        count = int(round(fraction * len(rows)))
        for n in sorted(rng.choice(candidates, size=min(count, len(candidates)), replace=False)):
            true = int(rows[n][1])
            given = int((true + rng.integers(1, classes)) % classes)  # any class but the true one
            rows[n][1] = str(given)
            flipped.append((rows[n][0], split, true, given))
        write_csv_atomic(out / layout.csv_names[split], (layout.id_column, layout.label_column), rows)
    write_csv_atomic(out / FLIPPED_IDS, ("id", "split", "true_label", "given_label"), flipped)


def _near_duplicate_ids(out: Path) -> set[str]:
    if not (out / NEAR_DUPLICATES).is_file():
        return set()
    with open(out / NEAR_DUPLICATES, newline="") as f:
        return {row[key].split("/", 1)[1] for row in csv.DictReader(f) for key in ("source", "copy")}


def _add_near_duplicates(out: Path, layout: Layout, count: int, rng) -> None:
    """Edited copies of `count` train images, in val (with the source's label) and test by turns."""
    train = _read_rows(out, layout, "train")
    if count > len(train):
        raise ValueError(f"near_duplicates={count} but there are only {len(train)} train images to copy")
    additions = {"val": [], "test": []}
    listed = []
    for n, source in enumerate(rng.choice(len(train), size=count, replace=False)):
        source_id, label = train[source]
        split, edit = ("val", "test")[n % 2], EDITS[n % len(EDITS)]
        copy_id = _image_id(layout, out, split, rng)
        with Image.open(layout.image_path(out, "train", source_id)) as image:
            edited = _edit(image.convert("RGB"), edit, rng)
        _save(layout.image_path(out, split, copy_id), edited)
        additions[split].append((copy_id, label) if split == "val" else (copy_id,))
        listed.append((f"train/{source_id}", f"{split}/{copy_id}", copy_id, edit))
    for split, rows in additions.items():
        header = (layout.id_column, layout.label_column) if split == "val" else (layout.id_column,)
        write_csv_atomic(out / layout.csv_names[split], header, _read_rows(out, layout, split) + rows)
    if getattr(layout, "sample_submission", None):  # every test id must be in the sample submission
        sample = out / layout.sample_submission
        with open(sample, newline="") as f:
            old = list(csv.reader(f))[1:]
        write_csv_atomic(sample, layout.submission_header(), old + [(row[0], 0) for row in additions["test"]])
    write_csv_atomic(out / NEAR_DUPLICATES, ("source", "copy", "copy_id", "edit"), listed)


def _edit(image: Image.Image, edit: str, rng) -> np.ndarray:
    """A copy a person would call the same picture: JPEG round trip, resized, or a little brighter/darker."""
    if edit == "reencoded":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(70, 90)))
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    if edit == "resized":  # a different file size; the cache resizes it back
        side = int(image.size[0] * rng.uniform(1.2, 1.6))
        return np.asarray(image.resize((side, side), Image.BICUBIC))
    factor = 1 + rng.choice([-1, 1]) * rng.uniform(0.08, 0.15)
    return np.clip(np.asarray(image, dtype=np.float32) * factor, 0, 255).astype(np.uint8)


def _write_csv_layout(out, layout: Layout, classes, size, counts, ids, pixels, draw):
    for split, per_class in counts.items():
        labels = np.repeat(np.arange(classes), per_class)
        pixels.shuffle(labels)  # competition CSVs are not sorted by class
        rows = []
        for label in labels:
            image_id = _image_id(layout, out, split, ids)
            _save(layout.image_path(out, split, image_id), draw(int(label), classes, size, pixels))
            rows.append((image_id, int(label)) if split != "test" else (image_id,))
        header = (layout.id_column, layout.label_column) if split != "test" else (layout.id_column,)
        write_csv_atomic(out / layout.csv_names[split], header, rows)
        if split == "test" and getattr(layout, "sample_submission", None):
            _write_sample_submission(out / layout.sample_submission, layout, [r[0] for r in rows], ids)


def _write_sample_submission(path, layout, test_ids, rng):
    """Test ids in another order than test.csv, label 0: submissions must follow this file."""
    order = np.arange(len(test_ids))
    while len(order) > 1 and np.array_equal(order, np.arange(len(order))):
        rng.shuffle(order)
    write_csv_atomic(path, layout.submission_header(), [(test_ids[i], 0) for i in order])


def _write_folders(out, classes, size, counts, ids, pixels, draw):
    width = max(2, len(str(classes - 1)))
    for label in range(classes):
        name = f"class_{label:0{width}d}"
        for split in ("train", "val"):
            for _ in range(counts[split]):
                file = _folder_file(name, split == "val", ids)
                _save(out / name / file, draw(label, classes, size, pixels))
    labels = np.repeat(np.arange(classes), counts["test"])
    pixels.shuffle(labels)
    for label in labels:
        _save(out / TEST_DIR / f"{_uuid(ids)}.png", draw(int(label), classes, size, pixels))


def _folder_file(class_name, want_val, rng):
    """A '<uuid>.png' whose hash lands in val (or train) the way FoldersLayout splits."""
    while True:  # about 10 draws for a val file, 1.1 for a train one
        file = f"{_uuid(rng)}.png"
        if (holdout_bucket(f"{class_name}/{file}") < FOLDERS_VAL_FRACTION) == want_val:
            return file


def _image_id(layout: Layout, root, split, rng) -> str:
    """A uuid id spelled as the layout wants: with '.png' if its image path does not add one."""
    image_id = _uuid(rng)
    if layout.image_path(root, split, image_id).suffix.lower() in IMAGE_SUFFIXES:
        return image_id
    return f"{image_id}.png"


def _uuid(rng) -> str:
    return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))


def _save(path: Path, array: np.ndarray):
    # PIL writes no tIME/text chunks unless asked, so the bytes depend only on the pixels.
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _rgb(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, max(0.0, v)), dtype=np.float32) * 255


@functools.lru_cache(maxsize=8)
def _grid(size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def _texture(texture, xx, yy, size, rng) -> np.ndarray:
    """Boolean pattern mask over the whole image, at a random angle, period and phase."""
    if texture == "solid":
        return np.zeros(xx.shape, dtype=bool)
    angle = rng.uniform(0, np.pi)
    period = size * rng.uniform(0.1, 0.18)
    u = (np.cos(angle) * xx + np.sin(angle) * yy) / period + rng.uniform()
    v = (-np.sin(angle) * xx + np.cos(angle) * yy) / period + rng.uniform()
    if texture == "stripes":
        return (u % 1.0) < 0.5
    if texture == "checker":
        return (np.floor(u) + np.floor(v)) % 2 == 1
    return (u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 < 0.3**2  # dots


def _shape_mask(shape, size, cx, cy, radius, angle) -> np.ndarray:
    """Float mask in [0, 1]: drawn at 2x with PIL and averaged down, for smooth edges."""
    k = 2
    mask = Image.new("L", (size * k, size * k), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = cx * k, cy * k, radius * k

    def polygon(points):  # unit-radius points, rotated, scaled and moved into place
        pts = np.asarray(points, dtype=np.float64)
        c, s = np.cos(angle), np.sin(angle)
        xy = pts @ np.array([[c, s], [-s, c]]) * r + (cx, cy)
        draw.polygon([tuple(p) for p in xy], fill=255)

    def disc(x, y, radius, fill):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)

    if shape == "circle":
        disc(cx, cy, r * 0.9, 255)
    elif shape == "ring":
        disc(cx, cy, r, 255)
        disc(cx, cy, r * 0.55, 0)
    elif shape == "crescent":
        disc(cx, cy, r, 255)
        disc(cx + 0.5 * r * np.cos(angle), cy + 0.5 * r * np.sin(angle), r * 0.85, 0)
    elif shape == "square":
        polygon(_regular(4, 1.0, np.pi / 4))
    elif shape == "triangle":
        polygon(_regular(3, 1.1, 0.0))
    elif shape == "star":
        outer, inner = _regular(5, 1.1, 0.0), _regular(5, 0.45, np.pi / 5)
        polygon(np.stack([outer, inner], axis=1).reshape(-1, 2))
    elif shape == "cross":
        a, b = 0.3, 0.95  # arm half-width, arm length
        polygon([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
                 (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    arr = np.asarray(mask, dtype=np.float32).reshape(size, k, size, k)
    return arr.mean(axis=(1, 3)) / 255


def _regular(n, radius, phase) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)
