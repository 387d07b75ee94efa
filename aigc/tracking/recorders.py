"""Where a training run's record goes, chosen once when a step starts.

- `MlflowRecorder`: an MLflow run (new, resumed, or nested under a parent run); results are staged
  in the outbox and shipped, so a server that goes away at the end loses nothing (`aigc sync`).
- `LocalRecorder`: tracking.enabled false; the same results in aigc-runs/<name>-<time>/
  (metrics in manifest.json, artifacts/, model.keras).
- `NoRecorder`: a non-chief worker of a distributed run; it trains but records nothing.

Every recorder has the same methods, so a step calls them in order without asking which it has:
`run(kind, name)` (a context; yields the recorder), `log_inputs(...)`, `callbacks()`,
`best_so_far(monitor, mode)`, `curves(history)`, `finish(stage)`; and `key` (a name for the run's
local working files), `run_id` and `folder` (None where they don't apply).

It chooses among the tracking package's own pieces: a step calls `recorders.choose(...)` once.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

from aigc import tracking
from aigc.errors import UserError
from aigc.tracking.offline import Outbox

LOCAL_RUNS = Path("aigc-runs")  # results of runs with tracking.enabled false


def choose(settings, chief: bool = True, resume: str | None = None, parent_id: str | None = None):
    """The recorder for this process: none for a worker, else MLflow or a local folder per tracking.enabled.

    MLflow is connected here, before any data is read, so a wrong URI fails in seconds.
    """
    if not chief:
        return NoRecorder()
    if settings.enabled:
        return MlflowRecorder(settings, resume, parent_id)
    if resume:
        raise UserError("--resume continues a tracked run; it needs tracking.enabled=true")
    return LocalRecorder()


class MlflowRecorder:
    """An MLflow run: `resume` continues that run, `parent_id` nests a new one under it."""

    folder = None

    def __init__(self, settings, resume: str | None = None, parent_id: str | None = None):
        tracking.connect(settings)
        self.settings, self.resume, self.parent_id = settings, resume, parent_id
        self.run_id = self.key = resume
        self.logger = None

    @contextlib.contextmanager
    def run(self, kind: str, name: str):
        with tracking.run(kind, name, run_id=self.resume, system_metrics=self.settings.log_system_metrics,
                          parent_id=self.parent_id) as active:
            self.run_id = self.key = active.info.run_id
            self.logger = tracking.epoch_logger(self.run_id, tracking.logged_epochs(self.run_id) if self.resume
                                                else set())
            yield self

    def log_inputs(self, config, summary: str, params: dict, tags: dict, datasets: list[dict]) -> None:
        """What the run was given (once: a resumed run has it already). `datasets`: tracking.log_dataset kwargs."""
        if self.resume:
            return
        tracking.log_config(config)
        tracking.log_params(params)
        tracking.set_tags(tags)
        for dataset in datasets:
            tracking.log_dataset(**dataset)
        tracking.log_text(summary, "model_summary.txt")

    def callbacks(self) -> list:
        return [self.logger]

    def best_so_far(self, monitor: str, mode: str) -> float | None:
        """The best value of `monitor` logged before a crash (resumed runs), else None."""
        best = tracking.best_logged(self.run_id, monitor, mode) if self.resume else None
        return best[1] if best else None

    def curves(self, history: dict) -> dict:
        """Every epoch's metrics: a resumed run's earlier epochs are on the server, not in this process's history."""
        return tracking.epoch_history(self.run_id, self.logger.seen)

    def finish(self, stage: Callable[[Outbox], None]) -> str | None:
        """Stage the results with `stage(box)`, then ship them; the logged model's URI (None if offline)."""
        box = Outbox(self.run_id)
        stage(box)
        self.logger.flush_into(box)
        if not tracking.ship(box):
            print(f"aigc: tracking server unreachable: this run's results are kept in {box.folder}; "
                  "run `aigc sync` when it is back", flush=True)
            return None
        return tracking.get_run(self.run_id).data.tags.get("aigc.model_uri")


class LocalRecorder:
    """A folder aigc-runs/<name>-<time>/ laid out like an outbox (an MLflow run's contents, on disk)."""

    run_id = None

    def __init__(self, root: Path = LOCAL_RUNS):
        self.root, self.key, self.box = Path(root), None, None

    @property
    def folder(self) -> Path | None:
        return self.box and self.box.folder

    @contextlib.contextmanager
    def run(self, kind: str, name: str):
        self.key = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.box = Outbox(self.key, root=self.root)
        self.box.tags({"aigc.kind": kind})
        yield self

    def log_inputs(self, config, summary: str, params: dict, tags: dict, datasets: list[dict]) -> None:
        """The two files an MLflow run gets at its start, and the tags."""
        self.box.text(config.to_yaml(), "config.yaml")
        self.box.text(summary, "model_summary.txt")
        self.box.tags(tags)

    def callbacks(self) -> list:
        return []

    def best_so_far(self, monitor: str, mode: str) -> None:
        return None  # untracked runs are not resumed

    def curves(self, history: dict) -> dict:
        """The epoch metrics, stored as an MLflow run would hold them (no epoch logger sent them anywhere)."""
        curves = {key: history[key] for key in tracking.EPOCH_KEYS if key in history}
        self.box.history(curves)
        return curves

    def finish(self, stage: Callable[[Outbox], None]) -> None:
        stage(self.box)
        return None


class NoRecorder:
    """A distributed worker: it runs every step the chief runs (the collective ops need it) and records nothing."""

    run_id = folder = key = None

    @contextlib.contextmanager
    def run(self, kind: str, name: str):
        yield self

    def log_inputs(self, *args, **kwargs) -> None:
        pass

    def callbacks(self) -> list:
        return []

    def best_so_far(self, monitor: str, mode: str) -> None:
        return None

    def curves(self, history: dict) -> dict:
        return history

    def finish(self, stage) -> None:
        return None
