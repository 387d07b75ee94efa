"""A run's life: start or resume it, tag it, end it (its status waits in the outbox during an outage), and
say where to browse it; an MLflow Project entry point run as a child of the active run."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from aigc.tracking import views
from aigc.tracking.connection import (
    TRACKING_ERRORS, as_user_error, current_experiment_id, display_uri, get_run, is_outage, mask_uri, refused,
)
from aigc.tracking.log import source_tags
from aigc.tracking.offline import Outbox


@contextlib.contextmanager
def run(kind: str, name: str, run_id: str | None = None, tags: dict | None = None, system_metrics: bool = False,
        parent_id: str | None = None):
    """Start (or resume: `run_id`, or the run `mlflow run` created) a run tagged with its kind.

    `parent_id` nests it under a run that may be active in another process (distributed
    tuning workers). If the server is gone when the run ends, the final status waits in
    the outbox (`aigc sync`). A tracking call the server refuses ends the step with a
    UserError naming the run.
    """
    try:
        active = _start(run_id, name, system_metrics, parent_id)
    except TRACKING_ERRORS as error:
        raise as_user_error(error, f"starting {kind} run {run_id or name}") from None
    global LAST_EXPERIMENT_ID
    status, experiment = "FAILED", active.info.experiment_id
    try:
        if not run_id:
            mlflow.set_tags({"aigc.kind": kind, **source_tags(), **(tags or {})})
            views.describe_experiment(experiment)
        yield active
        status = "FINISHED"
    except TRACKING_ERRORS as error:
        raise as_user_error(error, f"run {active.info.run_id}") from None
    finally:
        _end_run(active.info.run_id, status)
    LAST_EXPERIMENT_ID = experiment
    try:  # the view is a convenience: an outage or a refusal here must not fail a finished run
        views.share_runs_view(experiment)
    except TRACKING_ERRORS:
        pass


LAST_EXPERIMENT_ID = None  # the experiment of this process's last finished run: the CLI prints its runs view


def runs_link() -> str | None:
    """Where to browse the last finished run's experiment: its shared runs view on the tracking server, or on
    the UI `mlflow ui` / `make ui` serves for a local store; None when no run finished."""
    if LAST_EXPERIMENT_ID is None:
        return None
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return views.runs_link(display_uri(), LAST_EXPERIMENT_ID)
    return (f"{views.runs_link('http://127.0.0.1:5000', LAST_EXPERIMENT_ID)}   "
            f"(start the UI: mlflow ui --backend-store-uri {mask_uri(uri)}, or make ui)")


def _start(run_id, name, system_metrics, parent_id):
    nested = mlflow.active_run() is not None
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if run_id and launcher and launcher != run_id and not nested and not parent_id:
        # `mlflow run -P resume=ID` made a run of its own; it stays empty, so say where the work went.
        # (Only for the top-level run: a retried tuning trial inside its tune run is no such case.)
        MlflowClient().set_tag(launcher, "mlflow.note.content", f"Resumed run {run_id}: training continued there.")
    experiment = get_run(parent_id).info.experiment_id if parent_id else None
    return mlflow.start_run(run_id=run_id, experiment_id=experiment, run_name=None if run_id else name,
                            nested=nested, parent_run_id=None if run_id else parent_id,
                            log_system_metrics=system_metrics or None)


def _end_run(run_id: str, status: str) -> None:
    try:
        mlflow.end_run(status)
    except TRACKING_ERRORS as error:
        _stop_system_metrics(run_id)
        if is_outage(error):  # `aigc sync` sets the status later
            Outbox(run_id).status(status)
        elif status == "FINISHED":  # a failing step's own error says more than this one
            raise refused(error, f"run {run_id}") from None


def _stop_system_metrics(run_id: str) -> None:
    """end_run pops the run before telling the server; if that fails its monitor thread must still stop.

    No public API stops a run's system-metrics monitor except a successful `end_run`, so this
    reads fluent's registry of monitors (and does nothing if a release renames it).
    """
    # MLflow 3.17.2: end_run finishes the monitor only after set_terminated succeeds (the order mlflow/mlflow#9557
    # gave it); a release that finishes it whatever set_terminated raises makes this function unnecessary.
    from mlflow.tracking import fluent

    monitor = getattr(fluent, "run_id_to_system_metrics_monitor", {}).pop(run_id, None)
    if monitor:
        monitor.finish()


def run_project_step(project: Path | str, entry_point: str, parameters: dict) -> str:
    """Run an MLflow Project entry point as a child of the active run; returns its run id."""
    from mlflow.projects import run as project_run

    submitted = project_run(str(project), entry_point=entry_point, parameters=parameters, env_manager="local",
                            experiment_id=current_experiment_id(), synchronous=True)
    return submitted.run_id
