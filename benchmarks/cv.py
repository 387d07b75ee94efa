"""5. Cross-validation overhead: one `aigc cv` of K folds / K x one `aigc train` of the same size.

The dataset is made so that every fold is exactly one train run's worth: K=5 folds over
train + val pooled, with val a quarter of train, so a fold trains on as many images as
`train` does and validates on as many. What CV may add beyond its K trainings (pooling,
fold assignment, gathering the OOF table, the fold ensemble) is the overhead measured.
Choosing TTA on the OOF predictions is extra work by design (one prediction of the pool
per candidate transform): it is timed separately and reported for information.
"""

from __future__ import annotations

from aigc.data import load_data
from aigc.steps.cv import cross_validate
from aigc.steps.train import train
from benchmarks.datasets import generate
from benchmarks.figures import Figure, Result
from benchmarks.timing import Stopwatch
from benchmarks.workspace import Workspace, say

FOLDS, TARGET = 5, 1.05


def run(ws: Workspace) -> Result:
    s = ws.sizes
    per_class = max(8, s.per_class - s.per_class % (FOLDS - 1))  # val = train / (K - 1): folds match train
    data = generate(ws.root / "cv-data", s.classes, per_class, per_class // (FOLDS - 1), 2)
    base = {"train.epochs": 1, "cv.folds": FOLDS, "tracking.experiment": "bench-cv"}
    config = ws.config(**base, **{"cv.tta": False})
    ws.track(config)
    load_data(data, config.data, progress=False)  # the cache exists before any timed run, as after preprocess
    with Stopwatch() as one:
        train(data, config)
    with Stopwatch() as crossed:
        cross_validate(data, config)
    with Stopwatch() as with_tta:
        cross_validate(data, ws.config(**base))
    ratio = crossed.seconds / (FOLDS * one.seconds)
    tta_seconds = with_tta.seconds - crossed.seconds
    say(f"  one train {one.seconds:.1f} s; cv of {FOLDS} folds {crossed.seconds:.1f} s; with TTA chosen on OOF "
        f"{with_tta.seconds:.1f} s")
    figures = [Figure("cv_overhead", f"CV wall time / ({FOLDS} x one train)", ratio, TARGET, "lower",
                      detail=f"({crossed.seconds:.1f} vs {FOLDS} x {one.seconds:.1f} s)"),
               Figure("cv_tta_share", "Choosing TTA on OOF / the CV's own time", tta_seconds / crossed.seconds, None,
                      detail=f"(+{tta_seconds:.1f} s)")]
    return Result("cv", figures, {"train_seconds": one.seconds, "cv_seconds": crossed.seconds,
                                  "cv_tta_seconds": with_tta.seconds, "folds": FOLDS, "per_class": per_class},
                  [f"images per fold: train {s.classes * per_class}, validation {s.classes * per_class // (FOLDS - 1)}"])
