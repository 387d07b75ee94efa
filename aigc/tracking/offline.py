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


def stage_temperature(box, temperature: float, labels, *, before, after, after_in_sample, held_out: str) -> None:
    """train.calibrate: temperature, as fitted (aigc.crossfit): T, the scores before and after it on held-out
    probabilities (`after`: each row by a T fitted without it; `after_in_sample`: by the T shipped, for
    reference) and the reliability diagram; `held_out` names the rows ("validation", "out-of-fold")."""
    from aigc import evaluation as ev

    box.metrics({"calibration_temperature": temperature,
                 **{f"uncalibrated_{k}": v for k, v in ev.calibration_metrics(before, labels).items()},
                 **{f"calibrated_{k}": v for k, v in ev.calibration_metrics(after, labels).items()},
                 **{f"calibrated_{k}_in_sample": v for k, v in ev.calibration_metrics(after_in_sample, labels).items()}})
    box.figure(ev.reliability_figure({f"{held_out}, uncalibrated": before,
                                      f"temperature {temperature:.2f} (cross-fitted)": after}, labels),
               "evaluation/reliability_temperature.png")


def stage_evaluation(box, evaluation, class_names, images, labels, ids, probabilities, history=None,
                     source=None) -> None:
    """Everything a finished train/ensemble/cv run shows, written to its outbox for shipping: the final
    scores with their intervals and image count, and (`source`, a scores.Source) which rows they are on."""
    from aigc import evaluation as ev, pages
    from aigc.scores import IMAGES

    box.metrics({f"final_{key}": value for key, value in {**evaluation.metrics, **evaluation.intervals}.items()})
    box.metrics({IMAGES: evaluation.images})
    if source is not None:
        box.tags(source.tags())
    box.table(evaluation.per_class, "evaluation/per_class.csv")
    box.table(ev.confusion_table(evaluation, class_names), "evaluation/confusion_counts.csv")
    box.figure(ev.confusion_figure(evaluation, class_names), "evaluation/confusion_matrix.png")
    box.text(pages.confusion_html(images, labels, evaluation.predictions, probabilities.max(axis=1), class_names, ids,
                                  scored_on=source.phrase(evaluation.images) if source else ""),
             "evaluation/confusion_examples.html")
    box.figure(ev.mistakes_figure(images, probabilities, labels, ids, class_names), "evaluation/mistakes.png")
    box.table(ev.probabilities_table(ids, labels, probabilities), "evaluation/val_probabilities.csv")
    # calibration: are the probabilities worth averaging, thresholding or trusting? (log loss: final_log_loss)
    box.metrics({f"calibration_{key}": value for key, value in ev.calibration_metrics(probabilities, labels).items()
                 if key != "log_loss"})
    box.figure(ev.reliability_figure({"model": probabilities}, labels), "evaluation/reliability.png")
    if history:
        box.figure(ev.curves_figure(history), "evaluation/curves.png")


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
        from aigc.tracking.log import log_model_folder

        uri = log_model_folder(run_id, box.folder / MODEL_DIR, step=box.manifest["model"]["step"])
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

