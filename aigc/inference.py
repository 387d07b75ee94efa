"""Loading a logged model safely and streaming images through it (with its test-time augmentation)."""

from __future__ import annotations

import numpy as np

from aigc.data.pipeline import eval_dataset
from aigc.errors import UserError
from aigc.tta import apply as apply_transform, check_names, transform_names

ENSEMBLE_FILE = "ensemble.json"  # what marks a logged model as an aigc ensemble


def load_model(model_uri: str):
    """A Keras model, or an ensemble of them, from any MLflow model URI or a .keras file.

    Keras loads in safe mode and an ensemble is a JSON description: nothing from a
    run's artifacts is unpickled or executed. A .keras file is what an untracked
    train run (tracking.enabled false) leaves in aigc-runs/.
    """
    import json
    from pathlib import Path

    import mlflow

    if model_uri.endswith(".keras"):
        return _load_keras_file(Path(model_uri))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
        description = local / ENSEMBLE_FILE
        if description.is_file():
            from aigc.ensemble import EnsembleModel

            spec = json.loads(description.read_text())
            if spec.get("tta") is not None:
                check_names(spec["tta"], f"model {model_uri}: its {ENSEMBLE_FILE} tta")
            members = [load_model(member["model_uri"]) for member in spec["members"]]
            return EnsembleModel(members, [m["weight"] for m in spec["members"]], spec["method"], spec.get("tta"),
                                 _temperature(spec, model_uri))
        return mlflow.keras.load_model(str(local), load_model_kwargs={"safe_mode": True, "compile": False})
    except mlflow.exceptions.MlflowException as error:
        raise UserError(f"cannot load model {model_uri}: {error.message}") from None


def _temperature(spec: dict, model_uri: str) -> float | None:
    """An ensemble description's calibration temperature: absent, or a positive finite number."""
    value = spec.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UserError(f"model {model_uri}: its {ENSEMBLE_FILE} temperature must be a positive number, got {value!r}")
    return float(value)


def _load_keras_file(path):
    import keras

    if not path.is_file():
        raise UserError(f"{path}: no such model file; give a model reference or an aigc-runs/*/model.keras file")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (ValueError, OSError) as error:
        raise UserError(f"{path}: not a loadable Keras model ({error})") from None


def input_size(model) -> int:
    """The square image side a model was built for."""
    shape = model.input_shape
    return int(shape[1])


def predict_probabilities(model, images: np.ndarray, batch_size: int, tta=False) -> np.ndarray:
    """Class probabilities for a memory-mapped image array, batch by batch (never all in memory).

    `tta`: True averages with mirrored images, a list of transform names averages over
    exactly those (aigc.tta), False or None applies the set stored with the model (an
    ensemble description's "tta") or none. ["identity"] turns a stored set off.
    """
    names = transform_names(tta, getattr(model, "tta", None))
    total = None
    for name in names:
        dataset = eval_dataset(images, None, 0, batch_size)
        if name != "identity":
            dataset = dataset.map(lambda batch, name=name: apply_transform(name, batch))
        probabilities = model.predict(dataset, verbose=0)
        total = probabilities if total is None else total + probabilities
    return total / len(names) if len(names) > 1 else total
