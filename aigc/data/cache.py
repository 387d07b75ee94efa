"""The decoded-uint8 cache: every PNG decoded once, then read back with pread.

`preprocess` builds it (and validates every image on the way); `train` and
`predict` reuse it. It lives in `<cache_dir>/<fingerprint>-<size>/` where the
fingerprint covers ids, labels, file sizes and mtimes, so any change to the data
selects a new cache. One standard .npy file per split, and beside it the split's
64-bit perceptual hashes (`<split>.phash.npy`, computed from the decoded pixels while
they are in memory: the near-duplicate audit never decodes an image again). The build streams chunks
of decoded images to it, and reads copy just the rows asked for: the file's pages
stay in the OS page cache, never in the process's memory (a memory map would
count every page it touched: a 160k-image epoch would add the whole 2 GB file).

Every open verifies every byte: meta.json is typed and versioned (`Meta`), and holds a BLAKE2b
checksum of each file, computed while the build wrote it; a file whose bytes differ (zero-filled
with its header and size intact, a disk error) makes the cache damaged, and a damaged cache is
removed and rebuilt. Verifying costs 1.2-2.0 s per GiB (1.3-2.1 s per GB) of cache on this
repository's shared 2-core machine (blake2b reading from the page cache; a cold disk adds its read
time): about 0.4 s for a gic-sized cache (20k images at 64x64, 0.23 GiB) and 3-4 s for the 160k-image
scale benchmark (1.8 GiB), against minutes of training or prediction on the same images. It reads in
1 MiB blocks, so it adds no memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from aigc.data.layouts import Dataset
from aigc.errors import UserError, first_rows

CHUNK = 512  # images decoded per step: bounds memory during the build
CHUNK_BYTES = 256 << 20  # ...and fewer when they are large: a chunk's decoded pixels stay under this
VERSION = 3  # bump when the cache format changes (2: perceptual hashes; labels in the digest; 3: checksums)
CHECKSUM_BLOCK = 1 << 20  # bytes read at a time while verifying
# Limits on one image file, checked before it is decoded (a small PNG can claim to be
# 100,000 x 100,000 pixels). Module constants until the config grows keys for them;
# both are far beyond any competition image.


@dataclass(frozen=True)
class Limits:
    """What an image file may be before aigc refuses to decode it (data.max_image_bytes / _pixels)."""

    max_bytes: int = 64 << 20  # size of the file on disk
    max_pixels: int = 50_000_000  # width x height (PIL warns past 89M and refuses past 179M)


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray | None
    file_hash: str
    mode: str
    size: tuple[int, int]
    error: str = ""
    phash: int = 0  # 64-bit DCT hash of the decoded (resized) pixels


_STRICT = ConfigDict(strict=True)


@with_config(_STRICT)
class Report(TypedDict):
    """What the scan found (preprocess logs it as report.json)."""

    counts: dict[str, int]
    class_counts: dict[str, list[int]]
    modes: dict[str, int]
    sizes: dict[str, int]
    converted_to_rgb: int
    resized: int
    duplicates: list[list[str]]


@with_config(_STRICT)
class Meta(TypedDict):
    """meta.json: checked field by field on every open, so a damaged one is rebuilt, never a crash later."""

    version: Literal[VERSION]
    digest: str
    split_digests: dict[str, str]
    checksums: dict[str, str]  # file name -> BLAKE2b of its bytes, computed while writing it
    image_size: int
    layout: str
    root: str
    report: Report


_META = TypeAdapter(Meta)


class Cache:
    """A built cache: images per split (read with pread, see Images), plus the scan report."""

    def __init__(self, path: Path, meta: dict | None = None):
        self.path = path
        self.meta = meta if meta is not None else json.loads((path / "meta.json").read_text())

    @property
    def digest(self) -> str:
        return self.meta["digest"]

    def split_digest(self, split: str) -> str:
        return self.meta["split_digests"][split]

    @property
    def report(self) -> dict:
        return self.meta["report"]

    def images(self, split: str) -> Images:
        return Images(self.path / f"{split}.npy")

    def phashes(self, split: str) -> np.ndarray:
        """The split's perceptual hashes (uint64, one per image, in the split's order)."""
        return np.load(self.path / f"{split}.phash.npy")

    def __contains__(self, split: str) -> bool:
        return (self.path / f"{split}.npy").is_file()


class Images:
    """One split's images, (N, H, W, 3) uint8 in a .npy file, indexed like an array.

    `images[i]`, `images[a:b]` and `images[[i, j, ...]]` read only those rows (pread,
    safe from many threads); `np.asarray(images)` reads them all.
    """

    def __init__(self, path: Path):
        self.shape, self.dtype, self.offset = npy_header(path)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._rows(start, max(stop - start, 0))
            key = np.arange(start, stop, step)
        if np.ndim(key) == 0:
            return self._rows(self._check(int(key)), 1)[0]
        indices = [self._check(int(i)) for i in np.asarray(key).ravel()]
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        for row, index in enumerate(indices):
            self._read_into(out[row], index)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return self[:].astype(dtype)

    def _check(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} out of range for {len(self)} images")
        return index % len(self)

    def _rows(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, *self.shape[1:]), self.dtype)
        self._read_into(out, start)
        return out

    def _read_into(self, out: np.ndarray, start: int) -> None:
        view, position = memoryview(out).cast("B"), self.offset + start * self.row_bytes
        while len(view):  # one call reads at most ~2 GB
            done = os.preadv(self.fd, [view], position)
            if done <= 0:
                raise OSError(f"unexpected end of cache file at byte {position}")
            view, position = view[done:], position + done

    def __del__(self):
        if getattr(self, "fd", None) is not None:  # None if __init__ failed
            os.close(self.fd)


def cache_path(dataset: Dataset, image_size: int, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{dataset.layout.name}-{dataset.fingerprint()}-{image_size}-v{VERSION}"


def open_cache(dataset: Dataset, image_size: int, cache_dir: str | Path) -> Cache | None:
    """The built cache of this data and size; None when there is none, or it is damaged (then it is removed)."""
    path = cache_path(dataset, image_size, cache_dir)
    if not os.path.lexists(path):
        return None
    try:
        return Cache(path, _verified_meta(path, dataset, image_size))
    except Damaged as damage:
        print(f"aigc: cache {path} is damaged ({damage}); rebuilding it", file=sys.stderr, flush=True)
    _remove(path)
    return None


def build_cache(dataset: Dataset, image_size: int, cache_dir: str | Path, workers: int = 0,
                progress: bool = True, limits: Limits = Limits()) -> Cache:
    """Decode, validate, hash and cache every image; reuse an existing cache for the same data."""
    existing = open_cache(dataset, image_size, cache_dir)
    if existing:
        return existing
    final, workers = cache_path(dataset, image_size, cache_dir), workers or os.cpu_count() or 1
    check_room(dataset, image_size, final.parent, workers)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        meta = _scan_into(dataset, image_size, tmp, workers, progress, limits)
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(final)
        except OSError:  # another process built it first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
            return Cache(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Cache(final, meta)


def check_room(dataset: Dataset, image_size: int, cache_dir: Path, workers: int) -> None:
    """Refuse a cache the disk cannot hold, or images memory cannot, before anything is allocated."""
    row = image_size * image_size * 3
    need = sum(len(split) for split in dataset.splits.values()) * row
    existing = next(p for p in (cache_dir, *cache_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    fix = "lower data.image_size"
    if need > free:
        raise UserError(f"data.image_size {image_size}: the decoded cache needs {_gib(need)} in {cache_dir}, "
                        f"which has {_gib(free)} free; {fix}, or set data.cache_dir to a larger disk")
    # at once: one chunk, and in each decode thread a resized image and its array copy
    memory, available = row * (chunk_rows(image_size) + 2 * workers), _available_memory()
    if available is not None and memory > available:
        raise UserError(f"data.image_size {image_size}: decoding needs about {_gib(memory)} of memory at once, "
                        f"{_gib(available)} is available; {fix} (or data.workers)")


def chunk_rows(image_size: int) -> int:
    """Images decoded per step: CHUNK, fewer when they are large (never none)."""
    return max(1, min(CHUNK, CHUNK_BYTES // (image_size * image_size * 3)))


def _available_memory() -> int | None:
    """MemAvailable (free + reclaimable cache) on Linux; None where the platform does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(count: int) -> str:
    return f"{count / 2**30:,.1f} GiB"


class Damaged(Exception):
    """Why a built cache cannot be used as it is."""


def _verified_meta(path: Path, dataset: Dataset, image_size: int) -> dict:
    """The cache's meta.json, once it and every file it vouches for are checked; else Damaged."""
    try:
        meta = _META.validate_json((path / "meta.json").read_bytes())
        for split in dataset.splits.values():
            file = path / f"{split.name}.npy"
            shape, dtype, offset = npy_header(file)
            expected = (len(split), image_size, image_size, 3)
            if shape != expected or dtype != np.uint8:
                raise Damaged(f"{file.name} holds {dtype} {shape}, not uint8 {expected}")
            size, actual = offset + int(np.prod(shape, dtype=np.int64)), file.stat().st_size
            if actual != size:
                raise Damaged(f"{file.name} is {actual} bytes, not {size}")
            hashes = np.load(path / f"{split.name}.phash.npy", mmap_mode="r")
            if hashes.shape != (len(split),) or hashes.dtype != np.uint64:
                raise Damaged(f"{split.name}.phash.npy holds {hashes.dtype} {hashes.shape}, not uint64 "
                              f"({len(split)},)")
            for name in (file.name, f"{split.name}.phash.npy"):
                if meta["checksums"].get(name) != file_checksum(path / name):
                    raise Damaged(f"{name} does not match its checksum: its bytes changed since it was written")
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        where = ".".join(map(str, problem["loc"])) or "its top level"
        raise Damaged(f"meta.json: {where}: {problem['msg']}") from None
    except FileNotFoundError as error:
        raise Damaged(f"{Path(error.filename).name} is missing") from None
    except (OSError, ValueError) as error:
        raise Damaged(f"{type(error).__name__}: {error}") from None
    return meta


def file_checksum(path: Path) -> str:
    """BLAKE2b (128 bits) of a file's bytes, read a block at a time (any size, constant memory)."""
    checksum = hashlib.blake2b(digest_size=16)
    block = bytearray(CHECKSUM_BLOCK)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(block):
            checksum.update(memoryview(block)[:count])
    return checksum.hexdigest()


def npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a C-order .npy file; ValueError if it is not one."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        if fortran_order:
            raise ValueError(f"{path.name} is in Fortran order")
        return tuple(shape), dtype, f.tell()


def _remove(path: Path) -> None:
    """Move a damaged cache aside first, so no other process picks it up half-deleted, then delete it
    (whatever it is: a file or a link where the folder belongs goes too)."""
    aside = path.with_name(f".damaged-{path.name}-{os.getpid()}")
    try:
        path.rename(aside)
    except OSError:  # another process moved it already
        return
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def _scan_into(dataset: Dataset, image_size: int, folder: Path, workers: int, progress: bool,
               limits: Limits) -> dict:
    digest = hashlib.blake2b(digest_size=16)
    split_digests, checksums = {}, {}
    modes, sizes, errors = Counter(), Counter(), []
    by_hash: dict[str, list[str]] = {}
    converted = 0
    with ThreadPoolExecutor(workers) as pool:
        for split in dataset.splits.values():
            with open(folder / f"{split.name}.npy", "wb") as out:
                checksum = hashlib.blake2b(digest_size=16)  # of every byte written: verified on each open
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                              "shape": (len(split), image_size, image_size, 3)})
                out.write(header.getbuffer())
                checksum.update(header.getbuffer())
                bar = Progress(f"scanning {split.name}", len(split), enabled=progress)
                split_digest = hashlib.blake2b(digest_size=16)
                phashes = np.zeros(len(split), np.uint64)
                labels = split.labels if split.labels is not None else [""] * len(split)
                step = chunk_rows(image_size)
                for start in range(0, len(split), step):
                    paths = split.paths[start:start + step]
                    chunk = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
                    for offset, item in enumerate(pool.map(lambda p: decode(p, image_size, limits), paths)):
                        index = start + offset
                        if item.error:
                            errors.append(f"{paths[offset]} ({item.error})")
                            continue
                        chunk[offset] = item.pixels
                        modes[item.mode] += 1
                        sizes[f"{item.size[0]}x{item.size[1]}"] += 1
                        converted += item.mode != "RGB"
                        phashes[index] = item.phash
                        by_hash.setdefault(item.file_hash, []).append(f"{split.name}/{split.ids[index]}")
                        # the label too: relabelled data (data.relabel) is a different dataset
                        line = f"{split.name}|{split.ids[index]}|{labels[index]}|{item.file_hash}\n".encode()
                        digest.update(line)
                        split_digest.update(line)
                    out.write(chunk.data)
                    checksum.update(chunk.data)
                    bar.update(len(paths))
                bar.close()
                checksums[f"{split.name}.npy"] = checksum.hexdigest()
                np.save(folder / f"{split.name}.phash.npy", phashes)
                checksums[f"{split.name}.phash.npy"] = file_checksum(folder / f"{split.name}.phash.npy")
                split_digests[split.name] = split_digest.hexdigest()
    if errors:
        raise UserError(
            f"{len(errors)} unreadable images: {first_rows(errors)}; replace those files or remove their rows"
        )
    counts = {name: len(split) for name, split in dataset.splits.items()}
    class_counts = {
        name: np.bincount(split.labels, minlength=dataset.num_classes).tolist()
        for name, split in dataset.splits.items() if split.labels is not None
    }
    return {
        "version": VERSION,
        "digest": digest.hexdigest(),
        "split_digests": split_digests,  # promote compares models evaluated on the same val digest
        "checksums": checksums,
        "image_size": image_size,
        "layout": dataset.layout.name,
        "root": str(dataset.root),
        "report": {
            "counts": counts,
            "class_counts": class_counts,
            "modes": dict(modes),
            "sizes": dict(sizes),
            "converted_to_rgb": converted,
            # images not of the dataset's usual size (all are resized to image_size anyway)
            "resized": sum(sizes.values()) - max(sizes.values(), default=0),
            "duplicates": [ids for ids in by_hash.values() if len(ids) > 1],
        },
    }


def decode(path: Path, image_size: int, limits: Limits = Limits()) -> Decoded:
    """Read one image file: pixels resized to the cache size, content hash, and what it was."""
    try:
        if path.stat().st_size > limits.max_bytes:
            return Decoded(None, "", "", (0, 0), f"a file of {path.stat().st_size:,} bytes, over the "
                           f"{limits.max_bytes:,}-byte limit (data.max_image_bytes)")
        data = path.read_bytes()
    except OSError as error:
        return Decoded(None, "", "", (0, 0), f"cannot read: {error.strerror}")
    file_hash = hashlib.blake2b(data, digest_size=16).hexdigest()
    if not data:
        return Decoded(None, file_hash, "", (0, 0), "empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            mode, size = image.mode, image.size
            if size[0] * size[1] > limits.max_pixels:
                return Decoded(None, file_hash, mode, size, _too_many_pixels(size, limits))
            image.load()  # raises on truncated data, which open() alone does not read
            rgb = image.convert("RGB") if mode != "RGB" else image
            if size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
            pixels = np.asarray(rgb, dtype=np.uint8)
            return Decoded(pixels, file_hash, mode, size, phash=perceptual_hash(rgb))
    except UnidentifiedImageError:
        return Decoded(None, file_hash, "", (0, 0), "not an image")
    except Image.DecompressionBombError:  # PIL's own check, in open(), of sizes far past ours
        return Decoded(None, file_hash, "", (0, 0), _too_many_pixels(None, limits))
    except (OSError, SyntaxError, ValueError) as error:
        return Decoded(None, file_hash, "", (0, 0), f"corrupt image: {error}")


def perceptual_hash(image: Image.Image) -> int:
    """imagehash's pHash (DCT of a 32x32 grey image, 64 bits) as one integer: robust to re-encoding,
    resizing and brightness, so copies land a few bits apart while different images are ~32 apart."""
    import imagehash

    bits = imagehash.phash(image).hash.ravel()
    return int(np.packbits(bits).view(">u8")[0])


def _too_many_pixels(size, limits: Limits) -> str:
    dimensions = f"{size[0]:,} x {size[1]:,} pixels" if size else "an image of too many pixels"
    return (f"{dimensions}, over the {limits.max_pixels:,}-pixel limit (data.max_image_pixels); "
            "a decompression bomb or an image far too large to train on")


class Progress:
    """A one-line progress bar on stderr (a line per 10% when not a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.done = label, max(total, 1), 0
        self.enabled = enabled and total >= CHUNK
        self.tty = sys.stderr.isatty()
        self.start, self.last_decile = time.monotonic(), -1

    def update(self, count: int):
        self.done += count
        if not self.enabled:
            return
        decile = 10 * self.done // self.total
        if self.tty or decile != self.last_decile:
            rate = self.done / max(time.monotonic() - self.start, 1e-6)
            end = "\r" if self.tty else "\n"
            sys.stderr.write(f"{self.label}: {self.done}/{self.total} images ({rate:.0f}/s){end}")
            self.last_decile = decile

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")
