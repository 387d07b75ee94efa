"""The `ensemble` step: combine finished runs' validation probabilities into a registrable model."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd

from aigc import registry, tracking
from aigc.config import Config
from aigc.data import load_data
from aigc.ensemble import METHODS, choose_weights, combine, merge_submissions
from aigc.errors import UserError
from aigc.evaluation import competition_metric, evaluate, members_figure, metric_function
from aigc.tracking import Outbox


def ensemble(data_dir: str | Path, config: Config, members: list[str], top_k: int = 3,
             method: str = "greedy") -> dict:
    """Choose weights on validation, log the ensemble's evaluation and its description as a model."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    tracking.connect(config.tracking)
    with tracking.run("ensemble", f"ensemble-{method}") as active:
        runs = [_member_run(ref, config) for ref in members] if members else _top_runs(config, top_k)
        size = int(runs[0].data.params.get("data.image_size", config.data.image_size))
        dataset, cache = load_data(data_dir, dataclasses.replace(config.data, image_size=size))
        val = dataset.splits["val"]
        frames = [_probabilities(run, val.ids) for run in runs]
        probabilities = [f[[c for c in f.columns if c.startswith("p_")]].to_numpy() for f in frames]
        metric = competition_metric(dataset.layout.name, config.tracking.metric)
        score = metric_function(metric)
        member_scores = [score(val.labels, p.argmax(axis=1)) for p in probabilities]
        weights = choose_weights(method, probabilities, val.labels, score, member_scores)
        combined = combine(probabilities, weights, "hard" if method == "hard" else "soft")
        result = evaluate(combined, val.labels, dataset.class_names)

        names = [f"{r.info.run_name} ({r.info.run_id[:6]})" for r in runs]
        table = pd.DataFrame({"member": names, "run_id": [r.info.run_id for r in runs],
                              "family": [r.data.tags.get("aigc.model_family", "") for r in runs],
                              metric: member_scores, "weight": weights})
        tracking.log_params({"method": method, "members": " ".join(r.info.run_id for r in runs), "metric": metric})
        tracking.set_tags({"aigc.model_family": "ensemble", "aigc.layout": dataset.layout.name, "aigc.metric": metric,
                           "aigc.registered_model": config.tracking.registered_model,
                           "aigc.val_digest": runs[0].data.tags.get("aigc.val_digest", ""),
                           "aigc.dataset_digest": cache.digest, "aigc.config": Path(config.source).stem})
        box = Outbox(active.info.run_id)
        tracking.stage_evaluation(box, result, dataset.class_names, cache.images("val"), val.labels, val.ids, combined)
        tracking.ship(box)
        tracking.log_table(table, "ensemble/members.csv")
        tracking.log_figure(members_figure(names, member_scores, result.metrics[metric], metric),
                            "ensemble/members_vs_ensemble.png")
        tracking.log_dict({"method": method, "weights": dict(zip(table["run_id"], map(float, weights)))},
                          "ensemble/weights.json")
        description = {"method": "hard" if method == "hard" else "soft", "selection": method,
                       "members": [{"model_uri": r.data.tags["aigc.model_uri"], "run_id": r.info.run_id,
                                    "weight": float(w)} for r, w in zip(runs, weights)]}
        model_uri = tracking.log_ensemble_model(description)
        tracking.set_tags({"aigc.model_uri": model_uri})
    return {"run_id": active.info.run_id, "metric": metric, "score": result.metrics[metric],
            "members": dict(zip(names, member_scores)), "weights": weights.tolist(), "model_uri": model_uri}


def merge_csv(paths: list[str], out: str) -> Path:
    """The seed's merger: majority vote over submission files."""
    return merge_submissions([Path(p) for p in paths], Path(out))


def _member_run(reference: str, config: Config):
    """A train run from a run id, model URI, NAME@alias or registered version number."""
    if re.fullmatch(r"[0-9a-f]{32}", reference):
        run_id = reference
    else:
        uri, version = registry.resolve(reference, config.tracking.registered_model)
        if version is not None:
            run_id = version.run_id
        elif uri.startswith("runs:/"):
            run_id = uri.split("/")[1]
        else:
            run_id = registry.logged_model_run(uri)
    run = tracking.get_run(run_id)
    if run.data.tags.get("aigc.kind") != "train" or not run.data.tags.get("aigc.model_uri"):
        raise UserError(f"member {reference}: run {run_id} is not a finished train run with a model")
    return run


def _top_runs(config: Config, top_k: int):
    """The top-k finished train runs by tracking.metric, on the best run's validation set."""
    name = config.tracking.registered_model
    found = tracking.rank_runs(config.tracking.metric, kinds=("train",), registered_model=name, with_model=True).runs
    if len(found) < 2:
        raise UserError(f"an ensemble needs at least 2 finished train runs for {name}; found {len(found)}")
    digest = found[0].data.tags.get("aigc.val_digest")
    return [r for r in found if r.data.tags.get("aigc.val_digest") == digest][:top_k]


def _probabilities(run, ids) -> pd.DataFrame:
    """A member's validation probabilities in the dataset's id order (same validation set only)."""
    frame = tracking.load_probabilities(run.info.run_id)
    if sorted(frame["id"].astype(str)) != sorted(ids):
        raise UserError(f"member run {run.info.run_id} was evaluated on a different validation set than the data "
                        "given; ensemble runs trained on the same competition folder")
    return frame.set_index(frame["id"].astype(str)).loc[list(ids)].reset_index(drop=True)
