"""The only code that talks to MLflow about runs (the registry is in aigc/registry.py).

One module per job:
  connection  connect, start/end runs, experiments, the error taxonomy (outage vs refusal), URI masking
  log         params, config, tags, metrics, artifacts, datasets, models into the active run
  epochs      the per-epoch Keras callback and reading epoch metrics back
  offline     the Outbox (end-of-run outputs staged locally) and shipping it: `aigc sync`
  queries     typed queries: rank_runs, finished_step, child_runs, probabilities, histories
  views       what an experiment opens on in the UI: its kind, description and the shared runs view
  recorders   where a training run's record goes (MLflow, a local folder, nothing), chosen once per step

Everything else returns plain values and figures; `from aigc import tracking; tracking.X(...)`.
"""

from aigc.tracking.connection import (
    CODE_DIGEST, TRACKING_ERRORS, as_user_error, code_digest, connect, current_experiment_id, current_run_id, delete_run, display_uri,
    experiment_id, experiment_names, get_run, runs_link, http_status, is_outage, mask_uri, refused, run, run_project_step,
    use_experiment_of,
)
from aigc.tracking.epochs import EPOCH_KEYS, best_logged, epoch_images, epoch_history, epoch_logger, logged_epochs
from aigc.tracking.log import (
    CONFIG_DIGEST, DATASET_CONTEXTS, describe_run, key_part, link_model, log_config, log_dataset, log_dict, log_ensemble_model, log_figure, log_file, log_keras_model, log_metrics,
    log_model_folder, log_params, log_table, log_text, pip_requirements, record_on_run, save_keras_model,
    set_tags,
    tensorflow_distributions,
)
from aigc.tracking.views import RUNS_VIEW, share_runs_view
from aigc.tracking.offline import Outbox, pending, ship, stage_evaluation, stage_temperature, sync
from aigc.tracking.queries import (
    Ranking, artifact_files, child_runs, download_artifact, finished_step, load_probabilities, load_table,
    metric_history, rank_runs, run_config, runs_of_kind,
    search_runs,
)

__all__ = [
    "CODE_DIGEST", "CONFIG_DIGEST", "code_digest", "DATASET_CONTEXTS", "epoch_images", "key_part", "describe_run", "link_model", "EPOCH_KEYS", "TRACKING_ERRORS", "Outbox", "Ranking", "artifact_files", "as_user_error", "best_logged",
    "child_runs", "connect",
    "current_experiment_id", "current_run_id", "delete_run", "display_uri", "download_artifact", "epoch_history", "epoch_logger",
    "experiment_id", "experiment_names", "runs_link", "RUNS_VIEW", "share_runs_view", "finished_step", "get_run", "http_status", "is_outage", "load_probabilities", "load_table",
    "log_config", "log_dataset", "log_dict", "log_ensemble_model", "log_figure", "log_file", "log_keras_model",
    "log_metrics", "log_model_folder", "log_params", "log_table", "log_text", "logged_epochs", "mask_uri",
    "metric_history", "pending", "pip_requirements", "rank_runs", "record_on_run", "run_config", "runs_of_kind", "refused", "run", "run_project_step",
    "save_keras_model", "search_runs", "set_tags", "ship", "stage_evaluation", "stage_temperature", "sync", "tensorflow_distributions", "use_experiment_of",
]
