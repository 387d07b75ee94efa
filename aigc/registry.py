"""The MLflow model registry: versions, aliases (champion, challenger, previous-champion), model URIs.

Stages are deprecated in MLflow 3; aigc uses aliases only. The champion's history
is kept in a registered-model tag so that `rollback` can walk back more than once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from aigc import scratch, tracking
from aigc.errors import UserError
from aigc.tracking.queries import model_versions

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
HISTORY_TAG = "aigc.champion_history"  # comma-separated versions, oldest first


def client() -> MlflowClient:
    return MlflowClient()


@contextlib.contextmanager
def promotion_lock(name: str):
    """One promote at a time per (store, model) on this machine: aliases have no compare-and-set."""
    key = hashlib.sha1(f"{mlflow.get_tracking_uri()}|{name}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"aigc-promote-{key}.lock"
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def absent(error: MlflowException) -> bool:
    """True when the registry answered "no such model, version or alias"; anything else (a refusal, an
    outage, a server error) must not read as "there is none": promote would then skip the comparison."""
    if error.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # MLflow 3.17 answers a missing alias with INVALID_PARAMETER_VALUE "Registered model alias ... not found."
    return error.error_code == "INVALID_PARAMETER_VALUE" and "alias" in error.message and "not found" in error.message


@contextlib.contextmanager
def reading(what: str):
    """A registry read: "does not exist" is the caller's to handle (raised on), anything else one clear UserError."""
    try:
        yield
    except MlflowException as error:
        if absent(error):
            raise
        raise tracking.as_user_error(error, what) from None
    except tracking.TRACKING_ERRORS as error:
        raise tracking.as_user_error(error, what) from None


def version_for_run(name: str, run_id: str):
    """The registered version made from this run, or None (a run is registered once)."""
    try:
        with reading(f"the versions of model {name}"):
            versions = model_versions(name, run_id)
    except MlflowException:  # no such model yet
        return None
    return versions[0] if versions else None


def register(name: str, model_uri: str, tags: dict):
    """A new version of `name` (created if needed) from a logged model (`models:/m-...`), tagged.

    mlflow.register_model, not create_model_version: it also links the LoggedModel to its
    version (the logged model's `mlflow.modelVersions` tag), which the UI's model page shows.
    """
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    if not client().get_registered_model(name).description:  # register_model made it just now
        client().update_registered_model(name, description="aigc: the best model of a competition")
    return version


def alias_version(name: str, alias: str):
    """The version holding `alias`, or None when no version holds it (a refusal or an outage: UserError).

    Read from the registered model's own alias map: a basic-auth server answers the alias endpoint of a model
    that does not exist with 403 (MLflow 3.17), which must not read as a refusal, nor a refusal as "none"."""
    try:
        with reading(f"alias {alias} of model {name}"):
            number = client().get_registered_model(name).aliases.get(alias)
            return None if number is None else client().get_model_version(name, str(number))
    except MlflowException:  # no such model (or the version went away since): no version holds the alias
        return None


def get_version(name: str, version: str):
    try:
        with reading(f"version {version} of model {name}"):
            return client().get_model_version(name, str(version))
    except MlflowException:
        raise UserError(f"model {name} has no version {version}; {describe(name)}") from None


def set_champion(name: str, version: str) -> None:
    """Move champion to `version`; the one it replaces becomes previous-champion."""
    mlflow_client = client()
    current = alias_version(name, CHAMPION)
    if current and str(current.version) == str(version):
        return
    history = champion_history(name)
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))  # first: if refused, nothing moved
    if current:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, str(current.version))
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history + [str(version)]))


def set_challenger(name: str, version: str) -> None:
    client().set_registered_model_alias(name, CHALLENGER, str(version))


def rollback(name: str) -> tuple[str, str]:
    """Champion goes back to the version before it; returns (from, to)."""
    history = check_rollback(name)
    mlflow_client = client()
    current, previous = history[-1], history[-2]
    mlflow_client.set_registered_model_alias(name, CHAMPION, previous)
    if len(history) >= 3:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, history[-3])
    else:
        mlflow_client.delete_registered_model_alias(name, PREVIOUS)
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[:-1]))
    return current, previous


def check_rollback(name: str) -> list[str]:
    """The champion history, or a UserError when there is no earlier champion to roll back to."""
    history = champion_history(name)
    if len(history) < 2:
        raise UserError(f"model {name} has no earlier champion to roll back to; {describe(name)}")
    return history


def champion_history(name: str) -> list[str]:
    try:
        with reading(f"model {name}"):
            tag = client().get_registered_model(name).tags.get(HISTORY_TAG, "")
    except MlflowException:  # no such model: no champion yet
        return []
    return [v for v in tag.split(",") if v]


def describe(name: str) -> str:
    """'versions 1, 2, 3; aliases champion -> 2' (for error messages), or how to make one."""
    try:
        model = client().get_registered_model(name)
    except MlflowException:
        names = [m.name for m in client().search_registered_models()]
        known = f"registered models: {', '.join(names)}" if names else "no model is registered yet"
        return f"{known}; run promote first"
    versions = sorted(int(v.version) for v in model_versions(name))
    aliases = ", ".join(f"{alias} -> {version}" for alias, version in sorted(model.aliases.items())) or "none"
    return f"model {name} has versions {', '.join(map(str, versions)) or 'none'}; aliases: {aliases}"


def resolve(model: str, default_name: str) -> tuple[str, object | None]:
    """A user's model reference -> (loadable model URI, registered version or None).

    Accepts '' (the champion of `default_name`), `models:/NAME@alias`, `models:/NAME/3`,
    `NAME@alias`, a version number, a train run id, `runs:/...` or `models:/m-...`.
    """
    model = model.strip()
    if not model:
        model = f"models:/{default_name}@{CHAMPION}"
    if re.fullmatch(r"\d+", model):
        model = f"models:/{default_name}/{model}"
    elif re.fullmatch(r"[0-9a-f]{32}", model):
        return _run_model_uri(model), None
    elif "@" in model and not model.startswith("models:/"):
        model = f"models:/{model}"
    match = re.fullmatch(r"models:/([^/@]+)(?:@([\w-]+)|/(\d+))", model)
    if match and not match.group(1).startswith("m-"):
        name, alias, number = match.groups()
        version = alias_version(name, alias) if alias else _maybe_version(name, number)
        if version is None:
            wanted = f"alias {alias}" if alias else f"version {number}"
            raise UserError(f"{model}: {wanted} not found; {describe(name)}")
        return f"models:/{name}/{version.version}", version
    return model, None


def _maybe_version(name, number):
    try:
        with reading(f"version {number} of model {name}"):
            return client().get_model_version(name, number)
    except MlflowException:
        return None


def _run_model_uri(run_id: str) -> str:
    try:
        run = client().get_run(run_id)
    except MlflowException:
        raise UserError(f"run {run_id} not found in {tracking.display_uri()}") from None
    uri = run.data.tags.get("aigc.model_uri")
    if not uri:
        raise UserError(f"run {run_id} logged no model (is it a finished train or ensemble run?)")
    return uri


def aliases_by_run(name: str) -> dict[str, str]:
    """run id -> 'v3 champion, challenger' for every registered version of `name`."""
    try:
        with reading(f"model {name}"):
            model = client().get_registered_model(name)
            versions = model_versions(name)
    except MlflowException:  # nothing registered yet
        return {}
    by_version = {}
    for alias, version in model.aliases.items():
        by_version.setdefault(str(version), []).append(alias)  # MLflow gives ints here
    return {v.run_id: " ".join([f"v{v.version}", *sorted(by_version.get(str(v.version), []))]) for v in versions}


def download_model(model_uri: str) -> Path:
    """A model's files as a local folder (aigc.inference decides what of it may be loaded)."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(scratch.folder("model-"))))
    except tracking.TRACKING_ERRORS as error:
        if tracking.is_outage(error):
            raise tracking.as_user_error(error, f"model {model_uri}") from None
        cause = " ".join(getattr(error, "message", str(error)).split())[:300]
        raise UserError(f"cannot load model {model_uri}: {cause}; give NAME@alias, a version, a run id, "
                        "runs:/RUN_ID/NAME or models:/...") from None
    except Exception as error:  # each artifact backend (local files, S3, GCS, Azure) raises its own types
        cause = " ".join(str(getattr(error, "strerror", None) or error).split())[:300]
        raise UserError(f"cannot load model {model_uri}: {type(error).__name__}: {cause}") from None


def logged_model_run(model_uri: str) -> str:
    """The run that logged `models:/m-...`."""
    try:
        return mlflow.get_logged_model(model_uri.split("/")[-1]).source_run_id
    except MlflowException:
        raise UserError(f"model {model_uri} not found in {tracking.display_uri()}") from None


def describe_version(name: str, version: str, text: str) -> None:
    """A version's description (the registered model's page shows it)."""
    client().update_model_version(name, str(version), description=text)


def model_id(version) -> str | None:
    """The logged model (`m-...`) a registered version was made from."""
    return version.model_id or (version.source.removeprefix("models:/") if version.source.startswith("models:/m-")
                                else None)


def set_version_tags(name: str, version: str, tags: dict) -> None:
    """Tag a registered version (aigc submit records its public score this way)."""
    for key, value in tags.items():
        client().set_model_version_tag(name, str(version), key, str(value))
