"""The `ensemble` step: combine finished runs' validation probabilities into a registrable model."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd

from aigc import registry, tracking
from aigc.config import Config
from aigc.data import load_data
from aigc import folds, oof
from aigc.ensemble import METHODS, fit, merge_submissions
from aigc.ensemble import description as ensemble_description
from aigc.errors import UserError, first_rows
from aigc.evaluation import competition_metric, evaluate, members_figure, metric_function
from aigc.tracking import Outbox


def ensemble(data_dir: str | Path, config: Config, members: list[str], top_k: int = 3,
             method: str = "greedy") -> dict:
    """Choose weights on validation (or, for CV runs, on their out-of-fold predictions), log the
    ensemble's evaluation and its description as a model."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    tracking.connect(config.tracking)
    with tracking.run("ensemble", f"ensemble-{method}") as active:
        runs = [_member_run(ref, config) for ref in members] if members else _top_runs(config, top_k)
        size = int(runs[0].data.params.get("data.image_size", config.data.image_size))
        dataset, cache = load_data(data_dir, dataclasses.replace(config.data, image_size=size))
        ids, labels, probabilities, images = _member_probabilities(runs, dataset, cache)
        metric = competition_metric(dataset.layout.name, config.tracking.metric)
        fitted = fit(method, probabilities, labels, metric_function(metric))
        weights, member_scores, combined = fitted.weights, fitted.member_scores, fitted.probabilities
        result = evaluate(combined, labels, dataset.class_names)

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
        tracking.stage_evaluation(box, result, dataset.class_names, images, labels, ids, combined)
        # votes are no probabilities to calibrate; soft ensembles are, on the probabilities the weights were fitted on
        temperature = tracking.stage_temperature(box, combined, labels, "validation") if (
            config.train.calibrate == "temperature" and method != "hard") else None
        tracking.ship(box)
        tracking.log_table(table, "ensemble/members.csv")
        tracking.log_figure(members_figure(names, member_scores, result.metrics[metric], metric),
                            "ensemble/members_vs_ensemble.png")
        tracking.log_dict({"method": method, "weights": dict(zip(table["run_id"], map(float, weights)))},
                          "ensemble/weights.json")
        description = ensemble_description([{"model_uri": r.data.tags["aigc.model_uri"], "run_id": r.info.run_id}
                                            for r in runs], weights, "hard" if method == "hard" else "soft", method,
                                           temperature=temperature)
        model_uri = tracking.log_ensemble_model(description)
        tracking.set_tags({"aigc.model_uri": model_uri})
    return {"run_id": active.info.run_id, "metric": metric, "score": result.metrics[metric],
            "members": dict(zip(names, member_scores)), "weights": weights.tolist(), "model_uri": model_uri}


MEMBER_KINDS = ("train", "cv")


def merge_csv(paths: list[str], out: str, config: Config) -> Path:
    """The seed's merger: majority vote over submission files (each at most data.max_table_bytes)."""
    return merge_submissions([Path(p) for p in paths], Path(out), config.data.max_table_bytes)


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
    if run.data.tags.get("aigc.kind") not in MEMBER_KINDS or not run.data.tags.get("aigc.model_uri"):
        raise UserError(f"member {reference}: run {run_id} is not a finished train or cv run with a model")
    return run


def _top_runs(config: Config, top_k: int):
    """The top-k finished train runs by tracking.metric, on the best run's validation set."""
    name = config.tracking.registered_model
    found = tracking.rank_runs(config.tracking.metric, kinds=("train",), registered_model=name, with_model=True).runs
    if len(found) < 2:
        raise UserError(f"an ensemble needs at least 2 finished train runs for {name}; found {len(found)}")
    digest = found[0].data.tags.get("aigc.val_digest")
    return [r for r in found if r.data.tags.get("aigc.val_digest") == digest][:top_k]


def _member_probabilities(runs, dataset, cache):
    """(ids, labels, [probabilities per member], images) the weights are fitted on: the validation
    split for train runs; for CV runs their out-of-fold predictions, aligned by id (K times the data)."""
    kinds = {run.data.tags["aigc.kind"] for run in runs}
    if kinds == {"cv"}:
        aligned = oof.align_oof({f"{r.info.run_name} ({r.info.run_id})": tracking.load_probabilities(r.info.run_id)
                                 for r in runs})
        pool = folds.pool_splits(dataset, cache, runs[0].data.params.get("cv.pool_validation", "true") == "true")
        where = {image_id: n for n, image_id in enumerate(pool.ids)}
        unknown = [i for i in aligned.ids if i not in where]
        if unknown:
            raise UserError(f"the CV runs' out-of-fold ids are not images of {dataset.root} "
                            f"({first_rows(unknown)}); give the data folder they were trained on")
        return aligned.ids, aligned.labels, aligned.probabilities, pool.images.take([where[i] for i in aligned.ids])
    if len(kinds) > 1:
        raise UserError("ensemble members must be all train runs (fitted on validation) or all cv runs (fitted on "
                        "out-of-fold predictions), not a mix: their probabilities cover different images")
    val = dataset.splits["val"]
    frames = [_probabilities(run, val.ids) for run in runs]
    return val.ids, val.labels, [f[[c for c in f.columns if c.startswith("p_")]].to_numpy() for f in frames], \
        cache.images("val")


def _probabilities(run, ids) -> pd.DataFrame:
    """A member's validation probabilities in the dataset's id order (same validation set only)."""
    frame = tracking.load_probabilities(run.info.run_id)
    if sorted(frame["id"].astype(str)) != sorted(ids):
        raise UserError(f"member run {run.info.run_id} was evaluated on a different validation set than the data "
                        "given; ensemble runs trained on the same competition folder")
    return frame.set_index(frame["id"].astype(str)).loc[list(ids)].reset_index(drop=True)
