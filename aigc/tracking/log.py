"""Logging into the active run: params, the config, tags (which code made it too), metrics, artifacts, datasets,
models."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from aigc.tracking.connection import current_run_id

MAX_PARAM = 6000  # MLflow's limit on a param value's length
CONFIG_DIGEST = "aigc.config_digest"  # tag: Config.digest() of the step's resolved config


def log_params(params: dict[str, Any]) -> None:
    """Log params, skipping those the run already has (entry-point params, resumed runs).

    `mlflow run` logs entry-point params shell-quoted (`''`, `'a b'`) and a param cannot be changed:
    their plain values go beside them as `args.<name>`.
    """
    existing = mlflow.get_run(current_run_id()).data.params
    fresh = {f"args.{key}": plain for key, plain in _unquoted(existing).items() if f"args.{key}" not in existing}
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        text = text[:MAX_PARAM]
        if existing.get(key) is None:
            fresh[key] = text
    if fresh:
        mlflow.log_params(fresh)


def describe_run(text: str) -> None:
    """The active run's description (the UI's run overview shows it)."""
    mlflow.set_tag("mlflow.note.content", text)


def _unquoted(params: dict[str, str]) -> dict[str, str]:
    """The params whose values are shell-quoted, unquoted."""
    plain = {}
    for key, value in params.items():
        if not value.startswith("'"):
            continue
        try:
            tokens = shlex.split(value)
        except ValueError:
            continue
        if len(tokens) == 1 and shlex.quote(tokens[0]) == value:
            plain[key] = tokens[0]
    return plain


def log_config(config) -> None:
    """The resolved config: flattened as params and whole as config.yaml."""
    log_params(config.flat())
    mlflow.log_text(config.to_yaml(), "config.yaml")
    mlflow.set_tags({"aigc.config": Path(config.source).stem, "aigc.model_family": config.model.name,
                     CONFIG_DIGEST: config.digest()})
    from aigc.data.fixes import fix_tags  # which label-audit fixes this run's data had (path#content hash)

    mlflow.set_tags(fix_tags(config.data.exclude_ids, config.data.relabel))


def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}, step=step)


def key_part(text) -> str:
    """`text` usable inside a metric or image key (MLflow allows letters, digits, _ - . space /)."""
    return re.sub(r"[^\w\-. ]", "_", str(text))


def log_figure(figure, path: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, path)
    plt.close(figure)


def log_table(frame: pd.DataFrame, path: str) -> None:
    """A table as CSV (readable anywhere; the MLflow UI previews it)."""
    mlflow.log_text(frame.to_csv(index=False), path)


def log_text(text: str, path: str) -> None:
    mlflow.log_text(text, path)


def log_dict(data: dict, path: str) -> None:
    mlflow.log_dict(data, path)


def log_file(path: str | Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), folder)


DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # one context per split, every step


def log_dataset(ids, labels, digest: str, source: str, name: str, context: str) -> None:
    """A split as an MLflow dataset input, with our digest (MLflow's reads only 10,000 values).

    Labels go in as text: an integer column makes MLflow warn about missing values, which labels
    never have. The source is built as a local one: a bare path is ambiguous to MLflow (it warns).
    """
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    frame = pd.DataFrame({"id": [str(i) for i in ids]})
    if labels is not None:
        frame["label"] = np.asarray(labels).astype(str)
    local = get_dataset_source_from_json(json.dumps({"uri": str(source)}), source_type="local")
    dataset = mlflow.data.from_pandas(frame, source=local, name=name, digest=digest[:36],
                                      targets="label" if labels is not None else None)
    mlflow.log_input(dataset, context=context)


def link_model(model: str | None) -> None:
    """The logged model the active run used (`m-...` or `models:/m-...`; anything else is skipped) as its
    model input: the run page then lists the model and the registered versions made from it."""
    from mlflow.entities import LoggedModelInput

    model_id = (model or "").removeprefix("models:/")
    if model_id.startswith("m-"):
        MlflowClient().log_inputs(current_run_id(), models=[LoggedModelInput(model_id)])


# --- models ------------------------------------------------------------------------------------

def save_keras_model(model, folder: Path, sample: np.ndarray, outputs: np.ndarray | None = None) -> None:
    """The model as an MLflow model folder (Keras 3 flavour, signature, pinned requirements).

    `outputs`: the model's outputs for `sample` when already known (saves a predict call).
    """
    from mlflow.models import infer_signature

    signature = infer_signature(sample, model.predict(sample, verbose=0) if outputs is None else outputs)
    mlflow.keras.save_model(model, str(folder), signature=signature, pip_requirements=pip_requirements())


def log_model_folder(run_id: str, folder: Path, step: int = 0) -> str:
    """A saved MLflow model folder logged as `run_id`'s model at `step`; returns its models:/ URI.

    The public LoggedModel calls `log_model` makes: the model is the run's output at `step`
    (the run's metrics of that step are linked to it) and its MLmodel names the model and run.
    """
    from mlflow.entities import LoggedModelOutput, Metric
    from mlflow.models import Model

    client = MlflowClient()
    run = client.get_run(run_id)
    logged = mlflow.initialize_logged_model(name=model_name(run), source_run_id=run_id, params=run.data.params,
                                            experiment_id=run.info.experiment_id)
    client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=step)])
    at_step = [Metric(m.key, m.value, m.timestamp, m.step, model_id=logged.model_id, run_id=run_id)
               for key in run.data.metrics for m in client.get_metric_history(run_id, key)
               if m.step == step and m.model_id is None]
    for start in range(0, len(at_step), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=at_step[start:start + 1000])
    description = Model.load(str(folder))
    description.model_id = description.model_uuid = logged.model_id
    description.run_id, description.artifact_path = run_id, logged.artifact_location
    description.save(str(Path(folder) / "MLmodel"))
    client.log_model_artifacts(logged.model_id, str(folder))
    mlflow.finalize_logged_model(logged.model_id, "READY")
    return f"models:/{logged.model_id}"


def model_name(run) -> str:
    """A logged model is named after its run (the config's name, e.g. gic-resnet20), so the UI's model
    lists tell models apart; `runs:/<run_id>/<name>` resolves to it. MLflow refuses / : . % and quotes."""
    return re.sub(r"[/:.%\"'\s]+", "-", run.info.run_name or "").strip("-") or "model"


def log_keras_model(model, sample: np.ndarray, outputs: np.ndarray | None = None, step: int = 0) -> str:
    """The model as the active run's logged model; returns its URI (the same path a shipped outbox takes)."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "model"
        save_keras_model(model, folder, sample, outputs)
        return log_model_folder(current_run_id(), folder, step)


def pip_requirements() -> list[str]:
    """Explicit requirements (inferring them costs ~7 s per model), TensorFlow as actually installed."""
    pins = [f"{name}=={md.version(name)}" for name in ("mlflow", "keras", "numpy") if _installed(name)]
    return pins + [f"{name}=={md.version(name)}" for name in tensorflow_distributions()]


@functools.cache  # reading every installed distribution's file list takes ~1 s: once a process, not once a model
def tensorflow_distributions() -> tuple[str, ...]:
    """The installed distribution(s) providing the `tensorflow` package: tensorflow, tensorflow-cpu,
    tensorflow-macos, tf-nightly, ... (several may claim it; all are pinned as installed)."""
    names = md.packages_distributions().get("tensorflow", [])
    return tuple(sorted({re.sub(r"[-_.]+", "-", name).lower() for name in names}))  # PEP 503: tensorflow_cpu -> tensorflow-cpu


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def log_ensemble_model(description: dict, run_id: str | None = None, suffix: str = "") -> str:
    """The ensemble as a logged model of the active run (or `run_id`) holding only its JSON description;
    returns its URI. `suffix` tells it apart from a Keras model the same run logged: `runs:/<run>/<name>`
    must resolve to one model, never to whichever of two namesakes MLflow lists first."""
    from aigc.ensemble import ENSEMBLE_FILE

    run = MlflowClient().get_run(run_id or current_run_id())
    model = mlflow.initialize_logged_model(name=model_name(run) + suffix, source_run_id=run.info.run_id, model_type="aigc-ensemble",
                                           tags={"aigc.method": description["method"]})
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / ENSEMBLE_FILE).write_text(json.dumps(description, indent=2))
        MlflowClient().log_model_artifacts(model.model_id, folder)
    mlflow.finalize_logged_model(model.model_id, "READY")
    return f"models:/{model.model_id}"


def record_on_run(run_id: str, metrics: dict[str, float], tags: dict[str, Any]) -> None:
    """Add metrics (each a new point in its history, step = points so far) and tags to a run that
    already ended (aigc submit scores a predict run and the run that trained its model)."""
    from mlflow.entities import Metric, RunTag

    client, stamp = MlflowClient(), int(time.time() * 1000)
    points = [Metric(key, float(value), stamp, len(client.get_metric_history(run_id, key)))
              for key, value in metrics.items()]
    client.log_batch(run_id, metrics=points, tags=[RunTag(k, str(v)) for k, v in tags.items()])


# --- where a run's code came from ------------------------------------------------------------------

CODE_DIGEST = "aigc.code_digest"  # tag of every run: the aigc code that made it (main reuses a step only on a match)


@functools.cache
def code_digest() -> str:
    """A digest of aigc's own source files as they are now: the commit and any uncommitted edit alike, and
    the same for an installed copy with no git at all."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def source_tags() -> dict[str, str]:
    """Git commit and library versions (mlflow run sets its own git tag; direct CLI runs need ours).

    The versions of TensorFlow and Keras only where the step imported them (it trained or loaded a
    model): steps that never touch a model should not spend seconds importing TensorFlow for a tag.
    """
    tags = {f"aigc.{name}_version": sys.modules[name].__version__ for name in ("tensorflow", "keras")
            if name in sys.modules}
    tags[CODE_DIGEST] = code_digest()
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit() -> str:
    """The commit of the checkout aigc runs from (empty outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
