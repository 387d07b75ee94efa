"""12. Budget use on a real clock: how much of train.budget_minutes a budgeted fit spends.

The `gic_fast` recipe (narrowed to width 8, so that epochs are short and many) trains under a 1.5-minute
budget twice on the shared data: as the machine is, and with two busy processes started a third of the
way in (a neighbour's job: the epochs slow down mid-run, so the plan must shrink). The figure is the
seconds the fit used over the budget; the plan is also checked to end where the schedule ends (not cut
by the budget's hard stop). The fake-clock tests (tests/test_budget.py) cover the same logic exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from aigc import training
from benchmarks.figures import Figure, Result
from benchmarks.tricks import build
from benchmarks.workspace import REPO, Workspace

HOGS = 2  # busy processes: one per core of the 2-core machine this was written on
LOAD_AFTER = 1 / 3  # of the budget


def run(ws: Workspace) -> Result:
    minutes = 0.5 if ws.sizes.repeats < 3 else 1.5
    figures, data = [], {"budget_minutes": minutes}
    for i, loaded in enumerate((False, True)):
        plan = fit(ws, minutes, loaded)
        name = f"loaded ({HOGS} busy processes from {LOAD_AFTER:.0%} of the budget)" if loaded else "as the machine is"
        data[name] = plan
        figures.append(Figure(
            f"budget_{i}", f"budget used, {name}", plan["seconds_used"] / (minutes * 60), 0.97, unit="",
            detail=f"{plan['seconds_used']:.1f} of {minutes * 60:.0f} s; {plan['actual_epochs']:.2f} of "
                   f"{plan['planned_epochs']:.2f} planned epochs, {plan.get('replans', 0)} replans"
                   f"{', cut by the budget' if plan.get('stopped_by_budget') else ', ended at the schedule end'}"))
    return Result("budget", figures, data)


def fit(ws: Workspace, minutes: float, loaded: bool) -> dict:
    from aigc.data import load_data
    from aigc.data.pipeline import eval_dataset, train_dataset

    config = ws.config(REPO / "configs" / "gic_fast.yaml", **{
        "train.budget_minutes": minutes, "train.epochs": 1000, "train.precision": "float32",
        "model.params.width": 8, "data.layout": "gic", "data.image_size": 32})
    dataset, cache = load_data(ws.data_dir, config.data, progress=False)
    images, labels = cache.images("train"), dataset.splits["train"].labels
    _, fitted = build(config, dataset.num_classes, images)
    train_ds = train_dataset(images, labels, dataset.num_classes, config.data, config.augment, config.train.seed)
    val_ds = eval_dataset(cache.images("val"), dataset.splits["val"].labels, dataset.num_classes,
                          config.data.batch_size)
    hogs: list[subprocess.Popen] = []
    timer = threading.Timer(minutes * 60 * LOAD_AFTER, lambda: hogs.extend(
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(HOGS)))
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):  # Keras' epoch lines
        if loaded:
            timer.start()
        try:
            training.fit(fitted, train_ds, val_ds, config.train, Path(workdir), [], len(labels))
        finally:
            timer.cancel()
            for hog in hogs:
                hog.kill()
                hog.wait()
        plan = json.loads((Path(workdir) / training.PLAN).read_text())
    plan.pop("paces")
    return plan
