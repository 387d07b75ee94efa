"""TensorFlow's C++ start-up lines, kept off the user's terminal.

`TF_CPP_MIN_LOG_LEVEL` filters what TensorFlow logs once it runs, but since TF 2.19 the lines its
shared libraries log while they load (oneDNN, CPU features; "WARNING: All log messages before
absl::InitializeLog() ...") go through absl straight to stderr and ignore it (tensorflow/tensorflow
#100442, open for 2.21). So the first `import tensorflow`, wherever aigc or Keras makes it, runs with
the process's stderr (file descriptor 2) pointed at /dev/null; an import error is still raised, and
printed, after stderr is back. Remove this once TF honours the variable at load time.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys


@contextlib.contextmanager
def _stderr_discarded():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with _stderr_discarded():
            self.loader.exec_module(module)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` the usual way, once, and wraps its loader in `_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: TF's own submodules load normally
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Quiet the first TensorFlow import of this process (nothing to do if TF is already loaded)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
