"""What an experiment opens on in the MLflow UI: its kind and description, and the runs view aigc shares.

Every aigc run marks its experiment as model training (so the UI opens on its runs, not on GenAI
traces) and, when it ends, brings the experiment's shared runs view up to date. The view is MLflow's
own shared view state (plain JSON in the experiment tag the runs page's Share button writes), opened
by `runs_link`: the user's own saved views are untouched.

The view, as MLflow 3.17's runs page allows it:
- runs grouped by kind (train, cv, ensemble, promote, ...): a shared view cannot unfold a parent run
  (the UI keeps that per browser), and grouped, the steps `main` nests are in view at once; the folds of a
  cross-validation are kind `fold`, a group of their own, never mixed with the train runs;
- columns: the competition metric, its 95 % lower bound, the public score, and which images the score
  is on. A group is headed by the one aggregate the UI applies to every column (max): so only columns
  where higher is better are shown (a log loss column would be headed by its group's worst); `aigc runs`
  and each run's page show the log loss;
- charts: the epoch images as cards without the run's params (the UI's default card lists every param
  above the images, pushing them out of view); the UI generates the other charts itself.
"""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

RUNS_VIEW = "aigc-runs"  # the UI opens it at #/experiments/<id>/runs?viewStateShareKey=aigc-runs
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # what the runs page's Share button writes, read back from the URL
EPOCH_IMAGES = "aigc.epoch_images"  # tag of a train run: the keys of its per-epoch images, comma-separated
EXPERIMENT_KIND = "custom_model_development"  # the UI opens such an experiment on its runs, not on GenAI traces
EXPERIMENT_NOTE = ("aigc image classification. Runs are grouped by kind: `preprocess` describes the data, each "
                   "`train` run fits one config, a `cv` run cross-validates one (its `fold` runs are its parts), an "
                   "`ensemble` combines runs, `promote` moves the champion alias, `predict` writes a submission. "
                   "`final_*` scores say which images they were measured on (tag `aigc.score_on`, metric "
                   "`final_images`) and carry a 95 % interval (`_low`, `_high`); none is measured on images it was "
                   "fitted or chosen on.")
MAX_IMAGE_CARDS = 16  # the newest runs' first images: 4 per train run on one validation split
SECTION = "aigc-epoch"  # the uuid of the chart section of the epoch curves and images


def describe_experiment(experiment_id: str) -> None:
    """Mark the experiment as model training and describe it (once; a user's own note is kept)."""
    client = MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    for key, value in (("mlflow.experimentKind", EXPERIMENT_KIND), ("mlflow.note.content", EXPERIMENT_NOTE)):
        if key not in tags:
            client.set_experiment_tag(experiment_id, key, value)


def runs_view(metric: str, image_keys: list[str], step: int = 0) -> dict:
    """The shared view state for an experiment whose competition metric is `metric` and whose newest train
    run logged per-epoch images under `image_keys` (their cards open on `step`, its last epoch)."""
    column = lambda kind, name: f"{kind}.`{name}`"  # noqa: E731  the UI's column keys
    cards = [{"uuid": f"aigc-image-{n}", "type": "IMAGE", "imageKeys": [key], "step": step, "showRunParams": False,
              "runsCountToCompare": 10, "metricSectionId": SECTION, "deleted": False, "isGenerated": True}
             for n, key in enumerate(image_keys)]
    return {
        # no wide Dataset/Models columns: the grid draws only the columns in view, and attributes come first;
        # the UI's defaults (newest first) stay
        "selectedColumns": [column("metrics", f"final_{metric}"), column("metrics", f"final_{metric}_low"),
                            column("metrics", "public_score"), column("tags", "aigc.score_on"),
                            column("tags", "aigc.kind")],
        "groupBy": {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": "aigc.kind"}]},
        "useGroupedValuesInCharts": False,  # charts plot runs, not groups: a group has no curves or images
        "compareRunSections": [{"uuid": SECTION, "name": "epoch", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": True}],
        "compareRunCharts": cards,
    }


def share_runs_view(experiment_id: str) -> None:
    """Bring the experiment's shared runs view up to date with its runs (written only when it changed)."""
    client = MlflowClient()
    newest = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=100,
                                order_by=["attributes.start_time DESC"])
    metric = next((run.data.tags["aigc.metric"] for run in newest if "aigc.metric" in run.data.tags), "accuracy")
    pictured = [run for run in newest if run.data.tags.get(EPOCH_IMAGES)]
    keys = list(dict.fromkeys(key for run in pictured for key in run.data.tags[EPOCH_IMAGES].split(",")))
    step = int(pictured[0].data.tags.get("aigc.best_epoch") or 0) if pictured else 0  # the newest run's kept epoch
    text = json.dumps(runs_view(metric, keys[:MAX_IMAGE_CARDS], step))
    if client.get_experiment(experiment_id).tags.get(SHARED_VIEW_TAG + RUNS_VIEW) != text:
        client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + RUNS_VIEW, text)


def runs_link(base_url: str, experiment_id: str) -> str:
    """The address of the experiment's shared runs view on a UI served at `base_url`."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW}"
            "&workflowType=machine_learning")
