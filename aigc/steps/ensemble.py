"""The `ensemble` step: combine finished runs' validation probabilities into a registrable model."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd

from aigc import crossfit, folds, oof, registry, reports, scores, tracking
from aigc.config import Config
from aigc.data import load_data
from aigc.ensemble import METHODS, merge_submissions
from aigc.ensemble import description as ensemble_description
from aigc.errors import UserError, first_rows
from aigc.evaluation import competition_metric, evaluate, metric_function
from aigc.figures import members_figure
from aigc.scores import Source
from aigc.tracking import Outbox


def ensemble(data_dir: str | Path, config: Config, members: list[str], top_k: int = 3,
             method: str = "greedy") -> dict:
    """Fit the ensemble (member choice, weights, temperature) on the members' held-out probabilities,
    cross-fitted, log its evaluation and its description as a model.

    Held out: the validation split for train runs, the out-of-fold predictions for cv runs. Fitted and
    scored on the same rows, an ensemble of anything beats its members (greedy can never score below
    its best member there), so `final_*` is cross-fitted: the rows are cut into parts (a cv run's folds,
    or five stratified parts of the validation split) and each part is scored by an ensemble fitted on
    the others. The in-sample score is logged beside it as `final_*_in_sample`, for reference only.
    """
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    tracking.connect(config.tracking)
    with tracking.run("ensemble", f"ensemble-{method}") as active:
        runs = [_member_run(ref, config) for ref in members] if members else _candidate_runs(config)
        size = int(runs[0].data.params.get("data.image_size", config.data.image_size))
        dataset, cache = load_data(data_dir, dataclasses.replace(config.data, image_size=size))
        held_out = _member_probabilities(runs, dataset, cache, config.train.seed)
        labels = held_out.labels
        metric = competition_metric(dataset.layout.name, config.tracking.metric)
        score = metric_function(metric, dataset.num_classes)
        fitter = crossfit.ensemble(method, held_out.probabilities, labels, score, None if members else top_k)
        calibrate = config.train.calibrate == "temperature" and method != "hard"  # votes are no probabilities
        plain = crossfit.cross_fit(fitter, labels, held_out.parts)
        fitted = crossfit.cross_fit(crossfit.with_temperature(fitter, labels), labels, held_out.parts) \
            if calibrate else plain
        weights, temperature = fitted.parameters if calibrate else (fitted.parameters, None)
        result = evaluate(fitted.probabilities, labels, dataset.class_names, with_intervals=True)
        in_sample = evaluate(fitted.in_sample, labels, dataset.class_names).metrics
        member_scores = [score(labels, p.argmax(axis=1)) for p in held_out.probabilities]
        used = np.flatnonzero(weights)
        names = [f"{r.info.run_name} ({r.info.run_id[:6]})" for r in runs]
        table = pd.DataFrame({"member": names, "run_id": [r.info.run_id for r in runs],
                              "family": [r.data.tags.get("aigc.model_family", "") for r in runs],
                              metric: member_scores, "weight": weights})
        tracking.log_params({"method": method, "members": " ".join(r.info.run_id for r in runs), "metric": metric,
                             "top_k": "" if members else top_k})
        source = Source(held_out.rows, scores.CROSS_FITTED)
        tracking.set_tags({"aigc.model_family": "ensemble", "aigc.layout": dataset.layout.name, "aigc.metric": metric,
                           "aigc.registered_model": config.tracking.registered_model,
                           "aigc.val_digest": runs[0].data.tags.get("aigc.val_digest", ""),
                           "aigc.dataset_digest": cache.digest,  # its members' configs, not one it never used
                           "aigc.config": "+".join(dict.fromkeys(r.data.tags.get("aigc.config", "?") for r in runs)),
                           "mlflow.note.content": _summary(method, names, used, result, in_sample, metric, source,
                                                           temperature)})
        box = Outbox(active.info.run_id)
        box.stage(reports.evaluation_report(result, dataset.class_names, held_out.images, labels, held_out.ids,
                                            fitted.probabilities, source=source))
        box.metrics({f"final_{key}_in_sample": value for key, value in in_sample.items()})
        if calibrate:
            box.stage(reports.temperature_report(temperature, labels, before=plain.probabilities,
                                                 after=fitted.probabilities, after_in_sample=fitted.in_sample,
                                                 held_out=held_out.rows))
        tracking.ship(box)
        tracking.log_table(table, "ensemble/members.csv")
        tracking.log_figure(members_figure(names, member_scores, result.metrics[metric], metric,
                                           in_sample[metric]), "ensemble/members_vs_ensemble.png")
        tracking.log_dict({"method": method, "weights": dict(zip(table["run_id"], map(float, weights)))},
                          "ensemble/weights.json")
        description = ensemble_description([{"model_uri": runs[i].data.tags["aigc.model_uri"],
                                             "run_id": runs[i].info.run_id} for i in used], weights[used],
                                           "hard" if method == "hard" else "soft", method, temperature=temperature)
        model_uri = tracking.log_ensemble_model(description)
        tracking.set_tags({"aigc.model_uri": model_uri})
    return {"run_id": active.info.run_id, "metric": metric, "score": result.metrics[metric],
            "in_sample": in_sample[metric], "interval": (result.intervals[f"{metric}_low"],
                                                         result.intervals[f"{metric}_high"]),
            "members": dict(zip(names, member_scores)), "weights": weights.tolist(), "model_uri": model_uri}


def _summary(method, names, used, result, in_sample, metric, source, temperature) -> str:
    """The ensemble run's description: what it combines and its cross-fitted score, on which rows."""
    chosen = ", ".join(names[i] for i in used)
    calibrated = f" Temperature {temperature:.3f}, cross-fitted the same way." if temperature else ""
    return (f"{method} ensemble of {chosen}. Scored on {source.phrase(result.images)}: {metric} "
            f"{scores.with_interval({**result.metrics, **result.intervals}, metric, prefix='')}"
            f". Fitted and scored on the same rows it would read {in_sample[metric]:.4f} "
            f"(`final_{metric}_in_sample`, for reference only).{calibrated}")


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


def _candidate_runs(config: Config):
    """Finished train runs with a model, on the best run's validation set: the members `top_k` are chosen
    from (the choice is part of the cross-fitted fit); at most ensemble.max_members."""
    name = config.tracking.registered_model
    found = tracking.rank_runs(config.tracking.metric, kinds=("train",), registered_model=name, with_model=True).runs
    if len(found) < 2:
        raise UserError(f"an ensemble needs at least 2 finished train runs for {name}; found {len(found)}")
    return tracking.comparable_runs(found, found[0].data.tags.get("aigc.val_digest"))[:config.ensemble.max_members]


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The members' held-out probabilities on the same rows, and the parts those rows are cross-fitted in."""

    rows: str  # scores.VALIDATION or scores.OUT_OF_FOLD
    ids: tuple
    labels: np.ndarray
    probabilities: list  # one (images x classes) array per member
    images: object  # the rows' pixels, for the evaluation pages
    parts: np.ndarray


def _member_probabilities(runs, dataset, cache, seed: int) -> HeldOut:
    """The validation split for train runs; for CV runs their out-of-fold predictions, aligned by id
    (K times the data), cross-fitted in the first run's folds (copies of an image share a fold)."""
    kinds = {run.data.tags["aigc.kind"] for run in runs}
    if kinds == {"cv"}:
        tables = {f"{r.info.run_name} ({r.info.run_id})": tracking.load_probabilities(r.info.run_id) for r in runs}
        aligned = oof.align_oof(tables)
        pool = folds.pool_splits(dataset, cache, runs[0].data.params.get("cv.pool_validation", "true") == "true")
        where = {image_id: n for n, image_id in enumerate(pool.ids)}
        unknown = [i for i in aligned.ids if i not in where]
        if unknown:
            raise UserError(f"the CV runs' out-of-fold ids are not images of {dataset.root} "
                            f"({first_rows(unknown)}); give the data folder they were trained on")
        first = next(iter(tables.values()))
        parts = first.set_index(first["id"].astype(str))["fold"].loc[list(aligned.ids)].to_numpy()
        return HeldOut(scores.OUT_OF_FOLD, aligned.ids, aligned.labels, aligned.probabilities,
                       pool.images.take([where[i] for i in aligned.ids]), parts)
    if len(kinds) > 1:
        raise UserError("ensemble members must be all train runs (fitted on validation) or all cv runs (fitted on "
                        "out-of-fold predictions), not a mix: their probabilities cover different images")
    val = dataset.splits["val"]
    frames = [_probabilities(run, val.ids) for run in runs]
    return HeldOut(scores.VALIDATION, val.ids, val.labels,
                   [f[[c for c in f.columns if c.startswith("p_")]].to_numpy() for f in frames], cache.images("val"),
                   crossfit.split(val.labels, seed=seed))


def _probabilities(run, ids) -> pd.DataFrame:
    """A member's validation probabilities in the dataset's id order (same validation set only)."""
    frame = tracking.load_probabilities(run.info.run_id)
    if sorted(frame["id"].astype(str)) != sorted(ids):
        raise UserError(f"member run {run.info.run_id} was evaluated on a different validation set than the data "
                        "given; ensemble runs trained on the same competition folder")
    return frame.set_index(frame["id"].astype(str)).loc[list(ids)].reset_index(drop=True)
