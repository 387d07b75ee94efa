"""Reading a file aigc is handed (a CSV, a list of ids): a regular file under a size cap, checked
before a byte is read. Without the cap a 2 GB file, or a link to one, is read whole into memory
(and parsed, at several times its size) before anything can say it is the wrong file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aigc.errors import UserError


def read_capped(path: str | Path, limit: int, key: str) -> bytes:
    """The bytes of the regular file `path`, or a UserError when it is larger than `limit` bytes
    (`key`: the config key that sets the cap) or not a regular file (a FIFO blocks, /dev/zero never ends)."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer; it means nothing for a regular file
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is not a regular file (a folder, a FIFO or a device); give the file itself")
        if info.st_size > limit:
            raise UserError(too_large(path, limit, key, info.st_size))
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew since, or the kernel does not say its size (/proc)
        raise UserError(too_large(path, limit, key))
    return data


def too_large(path, limit: int, key: str, size: int | None = None) -> str:
    """The message for a file over its cap: the cap's config key, and what to do."""
    size = f"{size:,} bytes, " if size is not None else ""
    return f"{path}: {size}over the {limit:,}-byte limit ({key}); check that this is the right file, or raise {key}"
