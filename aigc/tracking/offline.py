"""The local outbox and shipping it: a run's end-of-run outputs are written here first, then sent.

If the tracking server is gone when a long run ends, nothing is lost: the figures, tables,
metrics, tags and model stay in `.aigc-outbox/<run_id>/` and `aigc sync` uploads them into
the same run later. This module is the only code that reads or writes an outbox's contents.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from aigc.errors import UserError
from aigc.tracking.connection import TRACKING_ERRORS, fail_fast, is_outage, refused
from aigc.tracking.epochs import epoch_key

OUTBOX = Path(".aigc-outbox")
MODEL_DIR = "model"  # an MLflow model folder (mlflow.keras.save_model), shipped as the run's logged model
MODEL_FILE = "model.keras"  # the bare Keras file beside it, for untracked runs' `predict --model`
KERAS_MODEL = "aigc.keras_model_uri"  # tag: the run's Keras model; aigc.model_uri is it, or a description around it


class Outbox:
    """One run's pending outputs: artifacts/, model/ (an MLflow model), manifest.json."""

    def __init__(self, run_id: str, root: Path = OUTBOX):
        self.run_id = run_id
        self.folder = Path(root) / run_id
        self.artifacts = self.folder / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / "manifest.json"
        try:
            self.manifest = json.loads(manifest.read_text()) if manifest.is_file() else {
                "run_id": run_id, "metrics": [], "tags": {}, "model": None, "status": None}
        except ValueError as error:  # not JSON, not UTF-8: a disk or an editor damaged it
            raise UserError(f"{manifest} is damaged ({error}); move {self.folder} out of {root}/ and sync "
                            "again (its results cannot be uploaded as they are)") from None

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._add([(key, value, step) for key, value in metrics.items()])

    def history(self, history: dict[str, list[float]]) -> None:
        """Per-epoch values (Keras names) with step = epoch, as an MLflow run holds them (untracked runs)."""
        self._add([(epoch_key(key), value, epoch) for key, values in history.items()
                   for epoch, value in enumerate(values)])

    def queue_metrics(self, metrics: list) -> None:
        """mlflow.entities.Metric values that could not be sent (their timestamps kept)."""
        self.manifest["metrics"] += [[m.key, m.value, m.timestamp, m.step] for m in metrics]
        self.save()

    def _add(self, values: list[tuple[str, float, int]]) -> None:
        """(key, value, step) triples, skipping values MLflow could not store (None, NaN, inf)."""
        stamp = int(time.time() * 1000)
        self.manifest["metrics"] += [[key, float(value), stamp, int(step)] for key, value, step in values
                                     if value is not None and np.isfinite(value)]
        self.save()

    def tags(self, tags: dict) -> None:
        self.manifest["tags"].update({k: str(v) for k, v in tags.items()})
        self.save()

    def figure(self, figure, path: str) -> None:
        import matplotlib.pyplot as plt

        figure.savefig(self._path(path), dpi=100)
        plt.close(figure)

    def text(self, text: str, path: str) -> None:
        self._path(path).write_text(text)

    def table(self, frame: pd.DataFrame, path: str) -> None:
        frame.to_csv(self._path(path), index=False)

    def dict(self, data: dict, path: str) -> None:
        self._path(path).write_text(json.dumps(data, indent=2, default=str))

    def stage(self, report) -> None:
        """A report (aigc.reports) as it was handed: its metrics, tags and artifacts, each by its kind."""
        self.metrics(report.metrics)
        self.tags(report.tags)
        for path, item in report.artifacts.items():
            if isinstance(item, pd.DataFrame):
                self.table(item, path)
            elif isinstance(item, str):
                self.text(item, path)
            else:
                self.figure(item, path)

    def model(self, keras_model, inputs: np.ndarray, outputs: np.ndarray, step: int) -> None:
        """The Keras model as an MLflow model folder (signature from these sample inputs and outputs)."""
        from aigc.tracking.log import save_keras_model

        target = self.folder / MODEL_DIR
        shutil.rmtree(target, ignore_errors=True)
        save_keras_model(keras_model, target, inputs, outputs)
        keras_file = self.folder / MODEL_FILE
        keras_file.unlink(missing_ok=True)
        try:  # the same bytes under a plain name, without a second copy
            os.link(next(target.rglob("*.keras")), keras_file)
        except OSError:
            shutil.copyfile(next(target.rglob("*.keras")), keras_file)
        self.manifest["model"] = {"step": int(step)}
        self.save()

    def wrap(self, tta, temperature: float | None) -> None:
        """What the model is shipped with, beyond its own weights: its TTA set and its temperature. The run's
        model then becomes a one-member ensemble description around the Keras model (aigc.ensemble), which
        averages the views first and applies the temperature last, to exactly what it was fitted on."""
        self.manifest["wrap"] = {"tta": list(tta) if tta else None, "temperature": temperature}
        self.save()

    def status(self, status: str) -> None:
        """The final run status, when telling the server failed."""
        self.manifest["status"] = status
        self.save()

    def save(self) -> None:
        temporary = self.folder / "manifest.json.tmp"
        temporary.write_text(json.dumps(self.manifest))
        temporary.replace(self.folder / "manifest.json")

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, relative: str) -> Path:
        path = self.artifacts / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def pending(root: Path = OUTBOX) -> list[Outbox]:
    """Every run with outputs not yet shipped."""
    if not Path(root).is_dir():
        return []
    return [Outbox(p.name, root) for p in sorted(Path(root).iterdir()) if (p / "manifest.json").is_file()]


def ship(box: Outbox) -> bool:
    """Upload an outbox into its run (idempotent: nothing is logged twice); False during an outage.

    A request the server refuses (no permission, deleted run) raises a UserError naming the
    run; the outbox is kept, so `aigc sync` can send it once that is fixed.
    """
    try:
        _upload(box)
    except TRACKING_ERRORS as error:
        if is_outage(error):
            return False
        raise refused(error, f"run {box.run_id}") from None
    box.discard()
    return True


def _upload(box: Outbox) -> None:
    from mlflow.entities import Metric, RunTag

    client, run_id = MlflowClient(), box.run_id
    run = client.get_run(run_id)
    keys = {m[0] for m in box.manifest["metrics"]}
    logged = {(key, m.step, m.value) for key in keys for m in client.get_metric_history(run_id, key)}
    metrics = [Metric(k, v, t, s) for k, v, t, s in box.manifest["metrics"] if (k, s, v) not in logged]
    tags = [RunTag(k, v) for k, v in box.manifest["tags"].items()]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    if tags:
        client.log_batch(run_id, tags=tags)
    if any(box.artifacts.iterdir()):
        client.log_artifacts(run_id, str(box.artifacts))
    if box.manifest["model"] and "aigc.model_uri" not in run.data.tags:
        from aigc.ensemble import description
        from aigc.tracking.log import log_ensemble_model, log_model_folder

        uri = run.data.tags.get(KERAS_MODEL) or log_model_folder(run_id, box.folder / MODEL_DIR,
                                                                  step=box.manifest["model"]["step"])
        client.set_tag(run_id, KERAS_MODEL, uri)  # first: a retried upload logs the Keras model once
        wrap = box.manifest.get("wrap")
        if wrap:
            shipped = description([{"model_uri": uri, "run_id": run_id}], [1.0], "soft", "single",
                                  wrap["tta"], wrap["temperature"])
            uri = log_ensemble_model(shipped, run_id, suffix="-shipped")
        client.set_tag(run_id, "aigc.model_uri", uri)
    if box.manifest["status"]:
        client.set_terminated(run_id, box.manifest["status"])


def sync() -> list[tuple[str, str]]:
    """Ship every pending outbox: (run id, "uploaded" | "unreachable" | the server's refusal) pairs."""
    fail_fast()
    outcomes = []
    for box in pending():
        try:
            outcomes.append((box.run_id, "uploaded" if ship(box) else "unreachable"))
        except UserError as error:  # the server refused this run's results: report it, ship the others
            outcomes.append((box.run_id, str(error)))
    return outcomes

