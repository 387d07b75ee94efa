"""The local outbox: a run's end-of-run outputs are written here first, then shipped to MLflow.

If the tracking server is gone when a long run ends, nothing is lost: the figures,
tables, metrics, tags and model stay in `.aigc-outbox/<run_id>/` and `aigc sync`
uploads them into the same run later. No MLflow calls here (tracking.ship does them).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

OUTBOX = Path(".aigc-outbox")


class Outbox:
    """One run's pending outputs: artifacts/, model.keras + sample.npz, manifest.json."""

    def __init__(self, run_id: str, root: Path = OUTBOX):
        self.run_id = run_id
        self.folder = Path(root) / run_id
        self.artifacts = self.folder / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / "manifest.json"
        self.manifest = json.loads(manifest.read_text()) if manifest.is_file() else {
            "run_id": run_id, "metrics": [], "tags": {}, "model": None, "status": None}

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._add([(key, value, step) for key, value in metrics.items()])

    def history(self, history: dict[str, list[float]]) -> None:
        """Per-epoch values with step = epoch, as an MLflow run holds them (untracked runs)."""
        self._add([(key, value, epoch) for key, values in history.items() for epoch, value in enumerate(values)])

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
        """The Keras model saved locally, with sample inputs and outputs for its signature."""
        keras_model.save(self.folder / "model.keras")
        np.savez(self.folder / "sample.npz", inputs=inputs, outputs=outputs)
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
