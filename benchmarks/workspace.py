"""The throwaway world the benchmarks run in: a temp folder, an sqlite store there, sizes, one dataset."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aigc.config import Config, load
from aigc.data import load_data
from benchmarks.datasets import generate
from benchmarks.timing import Stopwatch

REPO = Path(__file__).resolve().parents[1]
RESNET20 = REPO / "configs" / "resnet20.yaml"


@dataclass(frozen=True)
class Sizes:
    classes: int
    per_class: int  # train images per class of the shared dataset
    val_per_class: int
    test_per_class: int
    repeats: int  # rounds of the side-by-side measurements (input pipeline, prediction)
    heavy_repeats: int  # rounds of the one-epoch training comparison (three runs a round)
    scale_repeats: int  # rounds of the scale runs (each size in each round)
    scale: tuple[int, ...]  # total images (train 80%, val 10%, test 10%) of each scale run


# A fifth of gic's train and val (13,000 / 2,000) and its whole test split (5,000).
FULL = Sizes(classes=100, per_class=26, val_per_class=4, test_per_class=50, repeats=3, heavy_repeats=3,
             scale_repeats=2, scale=(10_000, 40_000, 160_000))
QUICK = Sizes(classes=10, per_class=30, val_per_class=6, test_per_class=30, repeats=2, heavy_repeats=1,
              scale_repeats=1, scale=(1_000, 2_000, 4_000))


class Workspace:
    """Paths, configs and the shared dataset of one benchmark session."""

    def __init__(self, root: Path, sizes: Sizes):
        self.root, self.sizes = root, sizes

    def config(self, path: Path = RESNET20, **overrides) -> Config:
        """A config with its cache in the workspace, plus dotted `overrides`."""
        return load(path, {"data.cache_dir": str(self.root / "cache"), **overrides})

    @functools.cached_property
    def data_dir(self) -> Path:
        """The shared gic dataset (generated on first use)."""
        s = self.sizes
        with Stopwatch() as watch:
            path = generate(self.root / "data", s.classes, s.per_class, s.val_per_class, s.test_per_class)
        total = s.classes * (s.per_class + s.val_per_class + s.test_per_class)
        say(f"generated {total} images in {watch.seconds:.0f} s ({path})")
        return path

    @functools.cached_property
    def data(self):
        """(Dataset, Cache) of the shared dataset, the cache built as `preprocess` would."""
        return load_data(self.data_dir, self.config().data, progress=False)

    def track(self, config: Config) -> None:
        """Create the store and experiment now, so no timed run pays sqlite's migrations."""
        from aigc import tracking

        tracking.connect(config.tracking)


@contextlib.contextmanager
def open_workspace(sizes: Sizes, keep: bool = False):
    """A temp folder made the working directory and the MLflow store; removed afterwards unless `keep`."""
    root = Path(tempfile.mkdtemp(prefix="aigc-bench-"))
    previous = os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ.pop("MLFLOW_RUN_ID", None)  # never log into a run that launched us
    os.chdir(root)  # train's checkpoints and the store's artifacts land here, never in the repo
    try:
        yield Workspace(root, sizes)
    finally:
        os.chdir(previous)
        if keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def say(line: str) -> None:
    print(line, flush=True)
