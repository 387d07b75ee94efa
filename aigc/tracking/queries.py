"""Typed queries over runs: ranking candidates, reusable steps, child runs, logged outputs.

MLflow filter strings are built here, from typed arguments, and nowhere else.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from aigc import scratch
from aigc.errors import UserError
from aigc.tracking.connection import current_experiment_id, get_run


@dataclass(frozen=True)
class Ranking:
    metric: str  # what the runs were ranked by: `final_<metric>` (resolved when "auto")
    runs: list  # mlflow Run objects, best first


def rank_runs(metric: str = "auto", direction: str = "max", *, experiment_ids: list[str] | None = None,
              kinds: tuple[str, ...] = ("train", "ensemble", "cv"), registered_model: str | None = None,
              run_id: str | None = None, with_model: bool = False) -> Ranking:
    """FINISHED runs of these kinds ranked by `final_<metric>`, best first (ties: the earlier run).

    `metric` "auto" is the newest candidate's `aigc.metric` tag (the competition's metric that
    train chose), else accuracy. Filters: trained for `registered_model`, only `run_id`, only
    runs that logged a model. Runs without the metric rank last. The fold runs of a cross-validation
    are parts of their cv run, not candidates of their own.
    """
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', not {direction!r}")
    clauses = ["attributes.status = 'FINISHED'"]
    if run_id:
        clauses.append(f"attributes.run_id = {_literal(_run_id(run_id))}")
    if registered_model:
        clauses.append(f"tags.`aigc.registered_model` = {_literal(registered_model)}")
    found = [r for r in search_runs(" and ".join(clauses), experiment_ids)
             if r.data.tags.get("aigc.kind") in kinds and "aigc.fold" not in r.data.tags
             and (r.data.tags.get("aigc.model_uri") or not with_model)]
    if metric == "auto":
        metric = found[0].data.tags.get("aigc.metric", "accuracy") if found else "accuracy"
    key, sign = f"final_{metric}", -1 if direction == "max" else 1
    found.sort(key=lambda r: (key not in r.data.metrics, sign * r.data.metrics.get(key, 0.0), r.info.start_time))
    return Ranking(metric, found)


def runs_of_kind(kinds: tuple[str, ...], experiment_ids: list[str], *, finished: bool = True,
                 tags: dict[str, str] | None = None) -> list:
    """Runs of these aigc kinds (FINISHED ones only, unless `finished` is false) with these tag values, newest first."""
    clauses = ["attributes.status = 'FINISHED'"] if finished else []
    clauses += [f"tags.`{key}` = {_literal(value)}" for key, value in (tags or {}).items()]
    found = search_runs(" and ".join(clauses), experiment_ids)
    return [run for run in found if run.data.tags.get("aigc.kind") in kinds]


def finished_step(entry_point: str, config_digest: str, code_digest: str, dataset_digest: str | None = None):
    """A FINISHED run of this entry point made by the same resolved config and the same aigc code (and, when
    given, on the same dataset): a step `main` may reuse; or None."""
    from aigc.tracking.connection import CODE_DIGEST
    from aigc.tracking.log import CONFIG_DIGEST

    clauses = [f"tags.`mlflow.project.entryPoint` = {_literal(entry_point)}", "attributes.status = 'FINISHED'",
               f"tags.`{CONFIG_DIGEST}` = {_literal(config_digest)}", f"tags.`{CODE_DIGEST}` = {_literal(code_digest)}"]
    if dataset_digest is not None:
        clauses.append(f"tags.`aigc.dataset_digest` = {_literal(dataset_digest)}")
    found = search_runs(" and ".join(clauses))
    return found[0] if found else None


def child_runs(parent_id: str, kind: str) -> list:
    """The runs of one aigc.kind nested under `parent_id`, oldest first."""
    found = search_runs(f"tags.mlflow.parentRunId = {_literal(_run_id(parent_id))} "
                        f"and tags.`aigc.kind` = {_literal(kind)}",
                        [get_run(parent_id).info.experiment_id], ["attributes.start_time ASC"])
    return list(found)


def model_versions(name: str, run_id: str | None = None) -> list:
    """The registered versions of model `name` (only those made from `run_id`, when given)."""
    clauses = [f"name = {_literal(name)}"] + ([f"run_id = {_literal(_run_id(run_id))}"] if run_id else [])
    return MlflowClient().search_model_versions(" and ".join(clauses))


def search_runs(filter_string: str, experiment_ids: list[str] | None = None, order_by: list[str] | None = None):
    """Runs of the given experiments (default: the active run's) matching an MLflow filter.

    For the queries above; code outside this package asks one of them instead.
    """
    ids = experiment_ids or [current_experiment_id()]
    return MlflowClient().search_runs(ids, filter_string, order_by=order_by or ["attributes.start_time DESC"],
                                      max_results=5000)


def metric_history(run_id: str, key: str) -> list:
    return MlflowClient().get_metric_history(run_id, key)


def download_artifact(run_id: str, path: str, dst: str | Path | None = None) -> Path:
    """A run's artifact, downloaded without MLflow's progress bar (aigc's steps answer in a line or two)."""
    dst = dst or scratch.folder()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


def artifact_files(run_id: str, folder: str) -> list[str]:
    """Paths of the files directly in a run's artifact folder."""
    return [item.path for item in MlflowClient().list_artifacts(run_id, folder) if not item.is_dir]


def load_table(run_id: str, path: str) -> pd.DataFrame:
    """A CSV artifact of a run, at most tracking.max_artifact_bytes (checked before it is read: a run's
    artifacts are data anyone with write access to it can replace)."""
    from aigc.inputs import read_capped
    from aigc.tracking import connection

    local = download_artifact(run_id, path)
    data = read_capped(local, connection.MAX_ARTIFACT_BYTES, "tracking.max_artifact_bytes")
    try:
        return pd.read_csv(io.BytesIO(data))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"run {run_id}'s {path} is not a readable CSV ({' '.join(str(error).split())[:200]}); "
                        "it is not the table aigc logged") from None


def run_config(run_id: str) -> tuple[str, str, str]:
    """(the run whose config it is, its config.yaml as text or "" when none, the experiment's name) for a run a
    command is given: its own resolved config, or for a predict run the config of the run that made its model."""
    run = get_run(run_id)
    experiment = MlflowClient().get_experiment(run.info.experiment_id).name
    for candidate in dict.fromkeys((run_id, run.data.tags.get("aigc.source_run_id") or run_id)):
        if "config.yaml" in artifact_files(candidate, ""):
            with download_artifact(candidate, "config.yaml").open("rb") as handle:
                text = handle.read(MAX_CONFIG_BYTES + 1)
            if len(text) > MAX_CONFIG_BYTES:
                raise UserError(f"run {candidate}'s config.yaml is over {MAX_CONFIG_BYTES:,} bytes: not a config aigc "
                                "logged; pass --config")
            return candidate, text.decode("utf-8", errors="replace"), experiment
    return run_id, "", experiment


MAX_CONFIG_BYTES = 1 << 20  # aigc.config's cap on a config file


def load_probabilities(run_id: str) -> pd.DataFrame:
    """The validation probabilities a train or ensemble run logged (id, label, p_0..); a cv run's
    out-of-fold table (also its fold)."""
    return load_table(run_id, "evaluation/val_probabilities.csv")


def _run_id(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise UserError(f"{value!r} is not a run id (32 hexadecimal digits, as `aigc runs` and the MLflow UI show)")
    return value


def _literal(value: str) -> str:
    """A string literal for an MLflow filter (either quote; a value holding both is refused)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserError(f"{value!r}: a name may not contain both ' and \" (MLflow's search cannot quote it)")
