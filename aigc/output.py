"""Checking where a command will write, before it spends minutes computing what to write (and before
it starts a run that would end FAILED).

A path is checked as the writer will use it: its folders resolved, its last component not followed.
The writer renames a finished temporary file onto the path, which replaces whatever is there: a
symbolic link would become a regular file (`--out /dev/stdout` replaced the system's link), so a link
is refused, not followed. Nothing goes under /dev, /proc or /sys (devices and kernel files, never a
submission), and no output replaces a file the command reads (its data folder, config, fix files).
"""

from __future__ import annotations

import os
from pathlib import Path

from aigc.errors import UserError

SYSTEM_FOLDERS = (Path("/dev"), Path("/proc"), Path("/sys"))


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """`path` as a folder the command may create or fill, or a UserError saying why not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} exists and is not a folder; give a folder to write into")
    _check_place(path, option, ())
    _check_writable_parent(path, option)
    return path


def check_output_file(path: str | Path, option: str = "--out", inputs=()) -> Path:
    """`path` as a file the command may create or replace, or a UserError saying why not.

    Refused: a symbolic link; an existing path that is not a regular file (a folder, a device such
    as /dev/null, a FIFO); anything under /dev, /proc or /sys; one of `inputs` (files or folders the
    command reads) or an existing file inside one of them; a path under a file; a folder the user
    cannot write to. Missing folders are fine: the writer creates them.
    """
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise UserError(f"{option} {path}: give a file name, e.g. submissions/submission.csv")
    if path.is_symlink():
        raise UserError(f"{option} {path} is a symbolic link (to {os.readlink(path)}); writing would replace the "
                        "link itself with a file: give the path of a regular file")
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {path} exists and is not a regular file (a folder or a device); "
                        "give the path of a .csv file to create or replace")
    _check_place(path, option, inputs)
    _check_writable_parent(path, option)
    return path


def _check_place(path: Path, option: str, inputs) -> None:
    """Not under a system folder, not one of the command's `inputs` nor inside one."""
    where = Path(os.path.abspath(path)).parent.resolve() / path.name  # the folders resolved, the name not
    for system in SYSTEM_FOLDERS:
        if where.is_relative_to(system):
            raise UserError(f"{option} {path} is under {system} (devices and kernel files); give the path of a "
                            "file in one of your folders")
    for given in inputs:
        if not given or not Path(given).exists():  # "" (none given), a model URI: nothing on disk to replace
            continue
        source = Path(given).resolve()
        # an input folder's files are inputs too (the data folder's CSVs and images); a new file beside them is not
        if where == source or (where.is_relative_to(source) and os.path.lexists(where)):
            what = given if where == source else f"a file in {given}"
            raise UserError(f"{option} {path} is {what}, which this command reads; writing would replace it: "
                            "write the output elsewhere (e.g. submissions/)")


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
