"""Temporary folders of one aigc process (downloaded models and artifacts): all inside one folder that
is removed when the process exits, whether the command succeeded, failed or was interrupted (the CLI
turns Ctrl-C into an ordinary exit, status 130). MLflow's own downloads would each leave a folder in
/tmp behind."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

_root: Path | None = None  # created on first use: most commands download nothing


def folder(prefix: str = "download-") -> Path:
    """A new, empty folder, removed with all the others when the process exits."""
    global _root
    if _root is None:
        _root = _create_root()
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_root))


def _create_root() -> Path:
    """The process's folder, named and registered for removal before it exists: a Ctrl-C the moment it
    appears (between mkdtemp's return and the registration, as a test caught) would otherwise leave it."""
    while True:
        root = Path(tempfile.gettempdir()) / f"aigc-{secrets.token_hex(6)}"
        atexit.register(_remove, root, os.getpid())
        try:
            root.mkdir(mode=0o700)  # exclusive, like mkdtemp: an existing name (or a planted link) is refused
            return root
        except FileExistsError:
            atexit.unregister(_remove)  # not ours (the only registration so far): try another name


def _remove(root: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked child exiting leaves its parent's folder alone
        shutil.rmtree(root, ignore_errors=True)
