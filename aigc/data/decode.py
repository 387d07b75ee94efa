"""Reading one image file: its pixels resized to the cache's size, its content hash, its perceptual hash,
and what it was (mode, size), or why it cannot be used.

A file is checked before it is decoded: a small PNG can claim to be 100,000 x 100,000 pixels.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


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
