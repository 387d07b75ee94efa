"""CSV files in and out: a competition's tables read with every problem named by file and line, and
CSVs written atomically (a temporary file beside the target, renamed into place: never half-written)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import secrets
import stat
from pathlib import Path

import numpy as np

from aigc.config import DataConfig
from aigc.errors import UserError, first_rows, short
from aigc.inputs import read_capped


def read_csv(path: Path, id_column: str, label_column: str | None, max_bytes: int = DataConfig.max_table_bytes):
    """Ids (str) and labels (int64 or None); every problem is named by file and line.

    A file over `max_bytes` (data.max_table_bytes) is refused before it is read."""
    if not path.exists():
        raise UserError(f"{path}: file not found; the competition folder must contain it")
    reader = csv.DictReader(io.StringIO(_utf8(path, read_capped(path, max_bytes, "data.max_table_bytes")),
                                        newline=""))
    try:
        columns = reader.fieldnames or []
        needed = [id_column] + ([label_column] if label_column else [])
        for column in needed:
            if column not in columns:
                found = first_rows(map(short, columns)) or "none"
                raise UserError(f"{path}: missing column {column!r} (found: {found})")
        rows = list(reader)
    except csv.Error as error:  # a field past csv's limit (128 KiB)...; DictReader's own line_num lags a row
        raise UserError(f"{path}: line {reader.reader.line_num}: not a readable CSV row ({error}); fix that line") \
            from None
    ids = [row[id_column] or "" for row in rows]
    if label_column is None:
        return ids, None
    bad = [f"line {n + 2} ({short(row[label_column])})" for n, row in enumerate(rows) if not _is_int(row[label_column])]
    if bad:
        raise UserError(f"{path}: {label_column} is not an integer at {first_rows(bad)}; fix those rows")
    return ids, np.array([int(row[label_column]) for row in rows], dtype=np.int64)


def csv_header(path: Path) -> list[str]:
    """The column names on a CSV's first line (detection looks at nothing else)."""
    with path.open("rb") as handle:
        first = handle.readline(1 << 16)
    return next(csv.reader([_utf8(path, first).strip("\r\n")]), [])


def _utf8(path: Path, data: bytes) -> str:
    """Text of a CSV; bytes that are not UTF-8 are one clear error naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: bytes that are not UTF-8 ({data[error.start:error.start + 4]!r}); "
                        "save the file as UTF-8") from None


def write_csv_atomic(out: Path, header, rows) -> Path:
    """Write a CSV next to `out` and rename it into place: never a half-written file.

    The temporary file is created with mode 0666 so that the umask gives it the user's
    usual permissions (tempfile.mkstemp's 0600 would follow the file through the rename);
    a file it replaces keeps its own mode (a private 0600 submission stays private).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(out)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(fd, stat.S_IMODE(os.stat(out).st_mode))
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _create_beside(out: Path) -> tuple[int, Path]:
    """A new, exclusively created hidden file in `out`'s folder: (descriptor, path)."""
    while True:
        tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _is_int(text) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", text or "") is not None
