"""Checking where a command will write, before it spends minutes computing what to write."""

from __future__ import annotations

import os
from pathlib import Path

from aigc.errors import UserError


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """`path` as a folder the command may create or fill, or a UserError saying why not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} exists and is not a folder; give a folder to write into")
    _check_writable_parent(path, option)
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """`path` as a file the command may create or replace, or a UserError saying why not.

    Refused: an existing path that is not a regular file (a folder, a device such as /dev/null,
    a FIFO: the atomic rename would replace it), a path under a file, a folder the user
    cannot write to. Missing folders are fine: the writer creates them.
    """
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise UserError(f"{option} {path}: give a file name, e.g. submissions/submission.csv")
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {path} exists and is not a regular file (a folder or a device); "
                        "give the path of a .csv file to create or replace")
    _check_writable_parent(path, option)
    return path


def _check_writable_parent(path: Path, option: str) -> None:
    """The nearest existing folder above `path` is a folder the user can write to."""
    folder = path.parent
    while not folder.exists():  # the nearest folder that exists decides
        if folder.is_symlink():  # a dangling link: mkdir would fail on it
            raise UserError(f"{option} {path}: {folder} is a broken symbolic link")
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is a file, not a folder; give a path inside a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: no permission to write in {folder}; give a folder you can write to")
