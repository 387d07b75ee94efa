"""Loading a logged model safely and streaming images through it (with its test-time augmentation).

Safe means nothing from an artifact runs: a Keras `.keras` archive loads in Keras' safe mode
(no lambdas, no custom code) and an ensemble is a JSON description of other such models. What
MLflow would load some other way is refused before it is opened: an exported SavedModel
(`save_exported_model: true`) is loaded by `tf.saved_model.load`, which runs the graph's
initializers; pyfunc and pickle flavours run Python. So aigc reads the MLmodel file itself
(safe YAML) instead of calling `mlflow.keras.load_model`.

Nor may a model exhaust the machine: a `.keras` archive is refused when its zip central directory
declares more than model.max_archive_bytes unpacked or more than model.max_archive_files files
(a zip bomb: a 1.6 MB file that unpacks a 4 GB config.json), and an ensemble's members are counted,
nested ensembles included, before any of them loads; each distinct member loads once.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigc import safe_yaml
from aigc.config import ModelConfig
from aigc.ensemble import ENSEMBLE_FILE
from aigc.errors import UserError
from aigc.tta import batch_views, check_names, transform_names

MAX_MEMBERS = 50  # ensemble.max_members' default: Keras models one ensemble may load, nested ones included
MAX_DESCRIPTION_BYTES = 1 << 20  # an MLmodel or ensemble.json is a few KiB
STORE_SCHEMES = ("models:/", "runs:/")  # where ensemble members may come from without --allow-local-members


@dataclass(frozen=True)
class ArchiveLimits:
    """What a .keras archive may declare before aigc refuses to unpack it (model.max_archive_bytes / _files)."""

    max_bytes: int = ModelConfig.max_archive_bytes  # the members' unpacked sizes, added up
    max_files: int = ModelConfig.max_archive_files


def load_model(model_uri: str, allow_local_members: bool = False, max_members: int = MAX_MEMBERS,
               archive: ArchiveLimits = ArchiveLimits()):
    """A Keras model, or an ensemble of them, from an MLflow model URI or a .keras file.

    A .keras file is what an untracked train run (tracking.enabled false) leaves in aigc-runs/.
    An ensemble's members must be in the tracking store (models:/, runs:/) unless
    `allow_local_members`: a description is data anyone with write access to a run can change.
    At most `max_members` Keras models make up one ensemble (ensemble.max_members), counted before
    any loads; `archive` caps each one's .keras archive.
    """
    if model_uri.endswith(".keras"):
        return _load_keras_file(Path(model_uri), model_uri, archive)
    loader = _Loader(allow_local_members, max_members, archive)
    return loader.build(loader.plan(model_uri, ()))


@dataclass
class _Node:
    """One model of a tree, checked but not loaded: a Keras model (spec None) or an ensemble of `members`."""

    uri: str
    folder: Path  # its downloaded files
    spec: dict | None = None  # the ensemble's checked description
    members: list[_Node] = field(default_factory=list)
    temperature: float | None = None


class _Loader:
    """One model tree, in two passes. `plan` downloads each distinct model once, checks every description,
    refuses an ensemble inside itself and counts the Keras models (nested ones included) before any of
    them loads; `build` then loads each distinct Keras model once, however often it is a member."""

    def __init__(self, allow_local_members: bool, max_members: int, archive: ArchiveLimits):
        self.allow_local, self.max_members, self.archive = allow_local_members, max_members, archive
        self.folders: dict[str, Path] = {}  # uri -> downloaded folder
        self.models: dict[str, object] = {}  # uri -> loaded Keras model
        self.count = 0  # Keras models in the tree so far, a member each time it appears

    def plan(self, uri: str, chain: tuple[tuple[str, str], ...]) -> _Node:
        """`chain`: (uri, digest of its description) of the ensembles this one is a member of."""
        from aigc.tracking.queries import download_model

        if uri not in self.folders:
            self.folders[uri] = download_model(uri)
        local = self.folders[uri]
        description = local / ENSEMBLE_FILE
        if not description.is_file():
            self.count += 1
            if self.count > self.max_members:
                raise UserError(f"ensemble {chain[0][0]} holds more than {self.max_members} Keras models (nested "
                                "ensembles included; none was loaded); aigc loads at most that many "
                                "(ensemble.max_members)")
            return _Node(uri, local)
        data = _read_small(description, f"model {uri}: its {ENSEMBLE_FILE}")
        digest = hashlib.sha256(data).hexdigest()
        if any(digest == seen for _, seen in chain):  # the same description again: it would never end
            path = " -> ".join([u for u, _ in chain] + [uri])
            raise UserError(f"ensemble {chain[0][0]} contains itself ({path}); fix the member list of its "
                            f"{ENSEMBLE_FILE}")
        spec = check_description(data, uri, self.allow_local, self.max_members)
        temperature = _temperature(spec, uri)
        members = [self.plan(m["model_uri"], (*chain, (uri, digest))) for m in spec["members"]]
        return _Node(uri, local, spec, members, temperature)

    def build(self, node: _Node):
        """The loaded model of a planned node."""
        if node.spec is None:
            if node.uri not in self.models:
                self.models[node.uri] = _load_logged_keras(node.folder, node.uri, self.archive)
            return self.models[node.uri]
        from aigc.ensemble import EnsembleModel

        spec = node.spec
        return EnsembleModel([self.build(member) for member in node.members],
                             [m["weight"] for m in spec["members"]], spec["method"], spec.get("tta"), node.temperature)


def check_description(data: bytes, uri: str, allow_local: bool = False, max_members: int = MAX_MEMBERS) -> dict:
    """The ensemble description of model `uri`, every field checked, or a UserError naming the field."""
    where = f"model {uri}: its {ENSEMBLE_FILE}"
    try:
        spec = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UserError(f"{where} is not valid JSON ({str(error)[:200]})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{where} must be a JSON object with method, members and weights")
    if spec.get("method") not in ("hard", "soft"):
        raise UserError(f"{where}: method must be \"hard\" or \"soft\", not {str(spec.get('method'))[:50]!r}")
    members = spec.get("members")
    if not isinstance(members, list) or not members:
        raise UserError(f"{where}: members must be a non-empty list of {{\"model_uri\", \"weight\"}} objects")
    if len(members) > max_members:
        raise UserError(f"{where} lists {len(members)} members; aigc loads at most {max_members} "
                        "(ensemble.max_members)")
    for number, member in enumerate(members, start=1):
        _check_member(member, f"{where}: member {number}", allow_local)
    if sum(m["weight"] for m in members) <= 0:
        raise UserError(f"{where}: the members' weights add up to 0; give at least one a positive weight")
    tta = spec.get("tta")
    if tta is not None:
        if not isinstance(tta, list) or not all(isinstance(name, str) for name in tta):
            raise UserError(f"{where}: tta must be a list of transform names")
        check_names(tta, f"{where}: tta")
    return spec


def _check_member(member, where: str, allow_local: bool) -> None:
    if not isinstance(member, dict) or not isinstance(member.get("model_uri"), str) or not member["model_uri"]:
        raise UserError(f"{where} must be an object with a \"model_uri\" string and a \"weight\" number")
    weight = member.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise UserError(f"{where}: weight must be a finite number >= 0, not {str(weight)[:50]!r}")
    if not member["model_uri"].startswith(STORE_SCHEMES) and not allow_local:
        raise UserError(f"{where}: {member['model_uri'][:200]!r} is not in the tracking store (models:/..., "
                        "runs:/...); pass --allow-local-members if you trust that path")


def _read_small(path: Path, where: str) -> bytes:
    """A small metadata file's bytes, refusing a huge or special one."""
    if not path.is_file():
        raise UserError(f"{where} is not a regular file")
    with path.open("rb") as handle:
        data = handle.read(MAX_DESCRIPTION_BYTES + 1)
    if len(data) > MAX_DESCRIPTION_BYTES:
        raise UserError(f"{where} is larger than {MAX_DESCRIPTION_BYTES // 1024} KiB; it holds a few settings")
    return data


def _load_logged_keras(local: Path, uri: str, archive: ArchiveLimits):
    """The .keras archive of an MLflow Keras-flavour model folder, found the way MLflow finds it."""
    where = f"model {uri}"
    mlmodel = local / "MLmodel"
    if not mlmodel.exists():
        raise UserError(f"{where} has no MLmodel file; give a model logged by aigc (a train, cv or ensemble run's)")
    try:
        text = _read_small(mlmodel, f"{where}: its MLmodel").decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where}: its MLmodel is not UTF-8 text") from None
    meta = safe_yaml.load(text, f"{where}: its MLmodel")
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    keras_flavor = flavors.get("keras") if isinstance(flavors, dict) else None
    if not isinstance(keras_flavor, dict):
        found = ", ".join(map(str, flavors)) if isinstance(flavors, dict) else "none"
        raise UserError(f"{where} is not a Keras model (flavours: {found}); aigc loads only Keras .keras models, "
                        "whose loading runs no code from the artifact")
    if keras_flavor.get("save_exported_model"):
        raise UserError(f"{where} is an exported TensorFlow SavedModel (save_exported_model: true): loading one runs "
                        "code stored in it, so aigc refuses it; log the model as a .keras archive instead")
    data = keras_flavor.get("data", "model")
    if not isinstance(data, str) or not data:
        raise UserError(f"{where}: its MLmodel's keras data must be a relative path")
    path = local / data
    if path.is_dir():  # what mlflow.keras.save_model writes: data/model.keras
        path = path / "model"
    path = path.with_name(path.name + ".keras")
    if not path.resolve().is_relative_to(local.resolve()):
        raise UserError(f"{where}: its MLmodel points outside the model folder ({data!r}); refused")
    return _load_keras_file(path, where, archive)


def _temperature(spec: dict, model_uri: str) -> float | None:
    """An ensemble description's calibration temperature: absent, or a positive finite number."""
    value = spec.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UserError(f"model {model_uri}: its {ENSEMBLE_FILE} temperature must be a positive number, got {value!r}")
    return float(value)


def _load_keras_file(path: Path, where: str, archive: ArchiveLimits):
    if not path.is_file():
        raise UserError(f"{where}: no such model file {path}; give a model reference or an aigc-runs/*/model.keras file")
    _check_archive(path, where, archive)
    import keras  # TensorFlow: only for an archive that passed

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # a damaged or hostile archive can fail in any of Keras' parsers (zip, JSON, HDF5)
        message = " ".join(str(error).split())[:300]
        raise UserError(f"{where}: not a loadable Keras model in safe mode ({type(error).__name__}: {message})") \
            from None


def _check_archive(path: Path, where: str, limits: ArchiveLimits) -> None:
    """Refuse a .keras archive whose central directory declares more than the limits, before Keras unpacks
    a byte. The declared sizes bind: zipfile never unpacks past a member's declared size."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{where}: {path} is not a .keras archive (a zip file: {error}); give a model aigc "
                        "saved") from None
    unpacked = sum(member.file_size for member in members)
    if len(members) > limits.max_files:
        raise UserError(f"{where}: {path} holds {len(members):,} files, over the {limits.max_files:,}-file limit "
                        "(model.max_archive_files); a Keras model is a few files: refused before unpacking")
    if unpacked > limits.max_bytes:
        raise UserError(f"{where}: {path} declares {unpacked:,} bytes unpacked, over the {limits.max_bytes:,}-byte "
                        "limit (model.max_archive_bytes); refused before unpacking (a zip bomb, or raise "
                        "model.max_archive_bytes for a model that large)")


def input_size(model) -> int:
    """The square image side a model was built for (a model for anything but square RGB images is refused)."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or not isinstance(shape[1], int):
        raise UserError(f"the model takes inputs of shape {shape}, not square RGB images (None, side, side, 3); "
                        "give a model aigc trained")
    return int(shape[1])


def predict_probabilities(model, images: np.ndarray, batch_size: int, tta=False) -> np.ndarray:
    """Class probabilities for a memory-mapped image array, batch by batch (never all in memory).

    `tta`: True averages with mirrored images, a list of transform names averages over
    exactly those (aigc.tta), False or None applies the set stored with the model (an
    ensemble description's "tta") or none. ["identity"] turns a stored set off.
    """
    from aigc.data.pipeline import eval_dataset  # TensorFlow: only once a model has loaded

    return output(model, eval_dataset(images, None, 0, batch_size), transform_names(tta, getattr(model, "tta", None)))


def view_probabilities(model, images: np.ndarray, batch_size: int, views) -> dict[str, np.ndarray]:
    """A model's probabilities for `images` under each TTA view (aigc.tta names), in one pass: every batch is
    read once and predicted with all its views stacked (what choosing a TTA set needs: 19 views of the
    validation split cost one read of it, not 19)."""
    from aigc.data.pipeline import eval_dataset

    views = list(views)
    per_batch = max(1, batch_size // len(views))  # the stacked batch stays near batch_size images
    dataset = eval_dataset(images, None, 0, per_batch).map(batch_views(views))
    stacked = model.predict(dataset, verbose=0)
    sizes = [min(per_batch, len(images) - start) for start in range(0, len(images), per_batch)]
    parts = np.split(stacked, np.cumsum([size * len(views) for size in sizes])[:-1])  # one block per batch
    return {name: np.concatenate([part.reshape(len(views), -1, part.shape[-1])[n] for part in parts])
            for n, name in enumerate(views)}


def output(model, dataset, views: tuple[str, ...]) -> np.ndarray:
    """What `model` predicts for a dataset of image batches: the mean of its raw probabilities over the
    transformed `views`, then its temperature, applied once to that mean (the temperature was fitted on
    exactly such means; the predicted class never changes). An ensemble's raw probabilities combine its
    members' outputs, each with its own stored views and temperature, as it was measured alone."""
    from aigc.ensemble import EnsembleModel, combine
    from aigc.evaluation import apply_temperature

    total = None
    for name in views:
        view = dataset if name == "identity" else dataset.map(batch_views([name]))
        if isinstance(model, EnsembleModel):
            raw = combine([output(member, view, transform_names(None, getattr(member, "tta", None)))
                           for member in model.members], model.weights, model.method)
        else:
            raw = model.predict(view, verbose=0)
        total = raw if total is None else total + raw
    mean = total / len(views)
    temperature = getattr(model, "temperature", None)
    return mean if temperature is None else apply_temperature(mean, temperature)
