"""Temporary folders of one aigc process (downloaded models and artifacts): all inside one folder that
is removed when the process exits, whether the command succeeded, failed or was interrupted (the CLI
turns Ctrl-C into an ordinary exit, status 130). MLflow's own downloads would each leave a folder in
/tmp behind."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_root: Path | None = None  # created on first use: most commands download nothing


def folder(prefix: str = "download-") -> Path:
    """A new, empty folder, removed with all the others when the process exits."""
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="aigc-"))
        atexit.register(_remove, _root, os.getpid())
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_root))


def _remove(root: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked child exiting leaves its parent's folder alone
        shutil.rmtree(root, ignore_errors=True)
