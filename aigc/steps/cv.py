"""The `cv` step: K stratified group folds, a nested train run per fold, out-of-fold probabilities,
TTA (and a temperature) fitted on them, cross-fitted, and the K fold models logged as one ensemble model.

Reads like the loop it runs: pool the labelled images -> cut folds (duplicates stay together) ->
train every fold not yet finished (resume) -> pseudo-label rounds (opt in) -> gather the OOF table
from the fold runs -> predict each fold's images under every TTA candidate -> fit the TTA set (and
temperature) across the folds, each fold scored by what was fitted on the others -> log the OOF
evaluation and the fold ensemble.

Nothing is chosen on the images that score it: a fold keeps its last epoch under a planned schedule, or
chooses on an inner slice of its training images (train.select_on); the TTA set and the temperature are
fitted on the other folds' out-of-fold predictions for each fold's score (aigc.crossfit). Label fixes
(data.exclude_ids / data.relabel) change what folds train on; every out-of-fold image is scored against
its original label (`final_<metric>`), and against the fixed one beside it (`final_<metric>_fixed_labels`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from aigc import crossfit, ensemble, folds, inference, oof, reports, scores, tracking, training, tta
from aigc.tracking import recorders
from aigc.config import Config
from aigc.data import load_data
from aigc.data.cache import Cache
from aigc.data.fixes import Fixes, read_fixes
from aigc.data.layouts import Dataset
from aigc.data.parts import Part, rows_digest
from aigc.errors import UserError
from aigc.evaluation import competition_metric, evaluate, metric_function
from aigc.figures import folds_figure
from aigc.scores import CROSS_FITTED, NONE, OUT_OF_FOLD, Source
from aigc.steps.train import fit_and_record

FOLD, ROUND = "aigc.fold", "aigc.round"  # tags of a fold run: which fold, which pseudo-label round


def cross_validate(data_dir: str | Path, config: Config, resume: str | None = None) -> dict:
    """Cross-validate `config` on the competition folder; `resume`: a killed CV run's id (trains the missing folds)."""
    tracking.connect(config.tracking)  # before decoding anything: a wrong URI fails in seconds
    if resume:
        _check_resumable(resume)
    dataset, cache = load_data(data_dir, config.data)
    fixes = read_fixes(dataset, config.data.exclude_ids, config.data.relabel)
    training.set_seed(config.train)
    pool = folds.pool_splits(dataset, cache, config.cv.pool_validation, config.data.near_duplicate_distance)
    assignment = folds.make_folds(pool.ids, pool.labels, pool.groups, config.cv.folds, config.train.seed,
                                  dataset.class_names)
    cv = Setup(config, dataset, cache, pool, assignment, _test_part(dataset, cache), fixes,
               competition_metric(dataset.layout.name, config.tracking.metric))
    rounds = config.cv.pseudo_label.rounds if config.cv.pseudo_label else 0
    work = Work(config, (rounds + 1) * config.cv.folds, len(pool.ids))

    with tracking.run("cv", f"{config.name}-cv{config.cv.folds}", run_id=resume) as parent:
        parent_id = parent.info.run_id
        if not resume:
            _log_inputs(cv)
        done = _finished_folds(parent_id)
        for round_ in range(rounds + 1):
            pseudo = _pseudo_labels(cv, done, round_) if round_ else {}
            for fold in range(config.cv.folds):
                if (fold, round_) not in done:
                    done[fold, round_] = _train_fold(cv, work.fold_config(), fold, round_, pseudo=pseudo.get(fold),
                                                     parent_id=parent_id, last_round=round_ == rounds)
                    work.trained(done[fold, round_])
                else:
                    work.trained(None)
        fold_runs = [done[fold, rounds] for fold in range(config.cv.folds)]
        table = oof.oof_table(pool.ids, pool.labels, assignment,
                              {fold: _val_probabilities(run) for fold, run in enumerate(fold_runs)})
        result = _log_outcome(cv, table, _oof_by_transform(cv, fold_runs, table), fold_runs)
    return {"run_id": parent_id, "metric": cv.metric, "score": result["score"], "folds": config.cv.folds,
            "fold_runs": [run["run_id"] for run in fold_runs], "model_uri": result["model_uri"], "tta": result["tta"],
            "fold_spread": result["spread"], "interval": result["interval"]}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every part of one cross-validation reads: the config, the data, the pool and its folds."""

    config: Config
    dataset: Dataset
    cache: Cache
    pool: folds.Pool
    assignment: np.ndarray  # each pooled image's fold
    test: Part | None  # the competition's test images, when the folder has them
    fixes: Fixes  # the label audit's: what the folds train on
    metric: str  # the competition's

    @property
    def pool_digest(self) -> str:
        return rows_digest(self.cache.digest, self.pool.ids, self.pool.labels)


class Work:
    """train.budget_minutes for a whole cross-validation: every fold of every pseudo-label round, and the
    out-of-fold TTA predictions after them, share it.

    Each fold gets what is left, less a reserve for the TTA predictions, divided by the folds still to
    train. The reserve starts at RESERVE of the budget and, once a fold has run, is what predicting the
    out-of-fold images of the last round's folds still to train once per TTA candidate costs at the pace
    that fold measured (each predicts its own as it finishes; prediction runs about PREDICT_SPEEDUP times
    faster than training, per image).
    """

    RESERVE = 0.08  # of the budget, before any fold has measured the pace
    PREDICT_SPEEDUP = 3.0  # a forward pass alone against forward + backward

    def __init__(self, config: Config, trainings: int, pooled: int):
        self.config, self.left, self.pooled = config, trainings, pooled
        self.seconds = config.train.budget_minutes * 60 if config.train.budget_minutes else None
        self.spent, self.reserve = 0.0, (self.seconds or 0) * self.RESERVE
        self.views = 1 + (len(tta.CANDIDATES) if config.cv.tta else 0)

    def fold_config(self) -> Config:
        """The config one fold trains with: its share of the budget; the cv run calibrates (folds don't)."""
        train = dataclasses.replace(self.config.train, calibrate="none")
        if self.seconds:
            minutes = fold_budget(self.seconds, self.spent, self.reserve, self.left) / 60
            train = dataclasses.replace(train, budget_minutes=minutes)
        return dataclasses.replace(self.config, train=train)

    def trained(self, result: dict | None) -> None:
        """A fold finished (None: an earlier process finished it): its seconds and pace update the plan."""
        self.left -= 1
        if result is None:
            return
        self.spent += result["seconds"]
        if result.get("images_per_second"):
            predict = 1 / (result["images_per_second"] * self.PREDICT_SPEEDUP)
            folds = self.config.cv.folds  # the last round's, each predicting its own out-of-fold images
            self.reserve = self.views * self.pooled * predict * min(self.left, folds) / folds


def fold_budget(total: float, spent: float, reserve: float, folds_left: int) -> float:
    """Seconds for the next fold: what is left of `total` after `spent` and the `reserve`, shared equally by
    the `folds_left` still to train (at least a few seconds: a fold always trains one epoch)."""
    return max((total - spent - reserve) / max(folds_left, 1), 5.0)


def _train_fold(cv: Setup, config: Config, fold: int, round_: int, *, pseudo, parent_id: str, last_round: bool
                ) -> dict:
    """One fold, trained with `config` (its share of the budget) on the other folds (plus this fold's own
    pseudo-labelled test images), validated on it; in the `last_round`, its out-of-fold TTA views too."""
    pool, test = cv.pool, cv.test
    train_rows, val_rows = folds.fold_indices(cv.assignment, fold)
    whole = Part("pool", pool.images, pool.labels, pool.ids, cv.pool_digest)
    name = f"fold{fold}" + (f"-round{round_}" if round_ else "")
    train_part, val_part = whole.take(train_rows, f"{name}-train"), whole.take(val_rows, f"{name}-val")
    train_part = cv.fixes.training(train_part)  # fixed labels train; the fold's own images keep theirs
    groups = pool.groups[train_rows]  # (fit_and_record drops them when fixes or pseudo-labels change the rows)
    if pseudo is not None:  # confident test predictions of this fold's own previous model: never its validation images
        rows, pseudo_labels = pseudo
        extra = Part("test", folds.PooledImages([test.images]), None, tuple(f"test/{i}" for i in test.ids), test.digest)
        train_part = _joined(train_part, extra.take(rows, "pseudo", pseudo_labels))
    print(f"[cv] {name}: training on {len(train_part.ids)} images, validating on {len(val_part.ids)}"
          + (f" (budget {config.train.budget_minutes:.1f} min)" if config.train.budget_minutes else ""), flush=True)
    training.set_seed(config.train)
    recorder = recorders.choose(config.tracking, parent_id=parent_id)
    started = time.monotonic()
    result = fit_and_record(config, cv.dataset, train_part, val_part, recorder, data_digest=cv.cache.digest, test=test,
                            name=f"{config.name}-{name}", tags={FOLD: fold, ROUND: round_}, train_groups=groups,
                            in_cv=True, oof_views=cv.config.cv.tta and last_round)
    run = tracking.get_run(result["run_id"])
    return {"run_id": result["run_id"], "model_uri": result["model_uri"], "seconds": time.monotonic() - started,
            "images_per_second": run.data.metrics.get("budget_images_per_second"), "views": result["val_views"]}


def _joined(a: Part, b: Part) -> Part:
    """Two parts as one (a fold's training images and its pseudo-labelled test images)."""
    images = folds.PooledImages([a.images, b.images])
    return Part(a.name, images, np.concatenate([a.labels, b.labels]), a.ids + b.ids, rows_digest(a.digest, b.digest))


def _finished_folds(parent_id: str) -> dict[tuple[int, int], dict]:
    """(fold, round) -> the fold run that finished it; a fold run that was killed is deleted, to be trained again."""
    finished = {}
    for run in tracking.child_runs(parent_id, "fold"):
        tags = run.data.tags
        if run.info.status == "FINISHED" and tags.get("aigc.model_uri"):
            finished[int(tags[FOLD]), int(tags.get(ROUND, 0))] = {"run_id": run.info.run_id,
                                                                   "model_uri": tags["aigc.model_uri"]}
        else:
            print(f"[cv] fold {tags.get(FOLD)}: run {run.info.run_id} did not finish; deleting it and training the "
                  "fold again", flush=True)
            tracking.delete_run(run.info.run_id)
    return finished


def _pseudo_labels(cv: Setup, done, round_: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """fold -> (test rows, labels) its previous-round model predicted with at least the threshold's confidence."""
    config, test, num_classes = cv.config, cv.test, cv.dataset.num_classes
    if test is None:
        raise UserError("cv.pseudo_label needs the competition's test images; this folder has no test split")
    threshold, chosen = config.cv.pseudo_label.threshold, {}
    counts = []
    for fold in range(config.cv.folds):
        probabilities = _test_probabilities(done[fold, round_ - 1], test)
        rows = np.flatnonzero(probabilities.max(axis=1) >= threshold)
        chosen[fold] = (rows, probabilities[rows].argmax(axis=1))
        counts.append({"round": round_, "fold": fold, "threshold": threshold, "images": len(rows),
                       **{f"class_{c}": int(n) for c, n in enumerate(np.bincount(chosen[fold][1], minlength=num_classes))}})
    tracking.log_table(pd.DataFrame(counts), f"pseudo_labels/round{round_}.csv")
    tracking.log_metrics({f"pseudo_labelled_round{round_}": float(np.mean([c["images"] for c in counts]))})
    print(f"[cv] round {round_}: {', '.join(str(c['images']) for c in counts)} test images pseudo-labelled per fold "
          f"(confidence >= {threshold})", flush=True)
    return chosen


def _oof_by_transform(cv: Setup, fold_runs, table) -> dict[str, np.ndarray]:
    """The OOF probabilities under every TTA candidate: each fold model predicts its own out-of-fold images once
    per transform (a fold trained in this process did as it finished; one an earlier process finished is loaded
    from its run). With cv.tta false only the plain OOF predictions (nothing to choose)."""
    if not cv.config.cv.tta:
        return {"identity": oof.probabilities_of(table)}
    order = {image_id: n for n, image_id in enumerate(table["id"].astype(str))}
    by_transform = {name: np.zeros((len(table), len(oof.probability_columns(table)))) for name in
                    ("identity", *tta.CANDIDATES)}
    for fold, run in enumerate(fold_runs):
        _, val_rows = folds.fold_indices(cv.assignment, fold)
        positions = [order[cv.pool.ids[r]] for r in val_rows]
        views = run.get("views") or inference.view_probabilities(
            inference.load_model(run["model_uri"]), cv.pool.images.take(val_rows), cv.config.data.batch_size,
            list(by_transform))
        for name, probabilities in views.items():
            by_transform[name][positions] = probabilities
    return by_transform


def _log_outcome(cv: Setup, table, by_transform, fold_runs) -> dict:
    """The parent's record: the OOF evaluation (TTA and temperature cross-fitted over the folds), the fold
    spread, the test average, the fold ensemble as a model."""
    config, dataset, pool, metric, test = cv.config, cv.dataset, cv.pool, cv.metric, cv.test
    labels, parts = table["label"].to_numpy(), table["fold"].to_numpy()
    score = metric_function(metric, dataset.num_classes)
    calibrate = config.train.calibrate == "temperature"
    done = crossfit.finish(by_transform, labels, score, parts, calibrate)  # each fold's set fitted on the others
    fitted, transforms, temperature = done.fitted, done.transforms, done.temperature
    final = table.copy()
    final[oof.probability_columns(table)] = fitted.probabilities  # what the fold ensemble's recipe gives each image
    evaluation = evaluate(fitted.probabilities, labels, dataset.class_names, with_intervals=True)
    in_sample = evaluate(fitted.in_sample, labels, dataset.class_names).metrics
    per_fold = oof.fold_scores(final, dataset.class_names)
    spread = oof.fold_spread(per_fold)
    source = Source(OUT_OF_FOLD, CROSS_FITTED if len(by_transform) > 1 or calibrate else NONE)
    box = tracking.Outbox(tracking.current_run_id())
    order = [pool.ids.index(i) for i in table["id"]] if list(table["id"]) != list(pool.ids) else slice(None)
    box.stage(reports.evaluation_report(evaluation, dataset.class_names,
                                        pool.images.take(np.arange(len(pool.ids))[order]), labels, list(table["id"]),
                                        fitted.probabilities, source=source))
    box.table(final, "evaluation/val_probabilities.csv")  # the OOF table: every pooled id once, with its fold
    box.table(table, "cv/oof_without_tta.csv")  # each image by its fold model alone, nothing fitted
    box.table(per_fold, "cv/fold_scores.csv")
    box.figure(folds_figure(per_fold, metric), "cv/fold_scores.png")
    for row in per_fold.itertuples():  # one curve across the folds on the cv run's charts (section "fold")
        box.metrics({f"fold/{key}": getattr(row, key) for key in oof.SCORES}, step=row.fold)
    box.metrics({**spread, **{f"final_{key}_in_sample": value for key, value in in_sample.items()},
                 **_fixed_label_scores(cv.fixes, table, fitted.probabilities, dataset.class_names)})
    box.stage(reports.finish_report(done, labels, score, metric, "out-of-fold"))
    if test is not None:
        average = oof.average_folds([_test_probabilities(run, test) for run in fold_runs])
        box.table(pd.DataFrame(average, columns=oof.probability_columns(table)).assign(id=list(test.ids))
                  [["id", *oof.probability_columns(table)]], "cv/test_probabilities.csv")
    tracking.ship(box)
    description = ensemble.fold_ensemble([run["model_uri"] for run in fold_runs], [run["run_id"] for run in fold_runs],
                                         list(transforms) if len(transforms) > 1 else None, temperature)
    model_uri = tracking.log_ensemble_model(description)
    tracking.set_tags({"aigc.model_uri": model_uri, "aigc.tta": "+".join(transforms), "aigc.best_epoch": "",
                       "mlflow.note.content": _summary(cv, evaluation, in_sample=in_sample, spread=spread,
                                                       finish=done, source=source)})
    return {"score": evaluation.metrics[metric], "spread": spread, "model_uri": model_uri, "tta": transforms,
            "interval": (evaluation.intervals[f"{metric}_low"], evaluation.intervals[f"{metric}_high"])}


def _fixed_label_scores(fixes, table, probabilities, class_names) -> dict[str, float]:
    """With label fixes: the out-of-fold scores against the fixed labels (excluded images left out), beside
    `final_*` against the original ones."""
    if not fixes:
        return {}
    ids = table["id"].astype(str).tolist()
    rows, labels = fixes.labels(ids, table["label"].to_numpy())
    scored = evaluate(probabilities[rows], labels, class_names).metrics
    return {f"final_{key}_fixed_labels": value for key, value in scored.items()}


def _summary(cv: Setup, evaluation, *, in_sample, spread, finish, source) -> str:
    """The run's description in the MLflow UI: what was cross-validated, how it scored, on which images."""
    config, metric, transforms, temperature = cv.config, cv.metric, finish.transforms, finish.temperature
    tta_text = (f"TTA {' + '.join(transforms)}" if len(transforms) > 1 else "no TTA (no transform helped)")
    calibrated = f", temperature {temperature:.3f}" if temperature else ""
    value = scores.with_interval(evaluation.metrics | evaluation.intervals, metric, "")
    return (f"{config.cv.folds}-fold cross-validation of {config.model.name} ({config.name}) at "
            f"{config.data.image_size}x{config.data.image_size}. Scored on {source.phrase(evaluation.images)}: "
            f"{metric} {value} (fold mean {spread[f'fold_{metric}_mean']:.4f} ± {spread[f'fold_{metric}_std']:.4f}). "
            f"The logged model is the mean of the {config.cv.folds} fold models with {tta_text}{calibrated}, fitted "
            f"on all out-of-fold predictions; each fold's score above comes from a set fitted on the other folds "
            f"(the same fit scored on the images it was fitted on: {in_sample[metric]:.4f}, "
            f"`final_{metric}_in_sample`, for reference only).")


def _log_inputs(cv: Setup) -> None:
    config, dataset, cache, pool, pool_digest = cv.config, cv.dataset, cv.cache, cv.pool, cv.pool_digest
    tracking.log_config(config)
    tracking.log_params({"num_classes": dataset.num_classes, "pooled_images": len(pool.ids)})
    tracking.set_tags({"aigc.layout": dataset.layout.name, "aigc.dataset_digest": cache.digest,
                       "aigc.val_digest": pool_digest, "aigc.metric": cv.metric, "aigc.model_family": "cv-ensemble",
                       "aigc.registered_model": config.tracking.registered_model})
    tracking.log_dataset(pool.ids, pool.labels, pool_digest, str(dataset.root), f"{dataset.root.name}-pooled",
                         context="cross-validation")
    tracking.log_table(pd.DataFrame({"id": pool.ids, "label": pool.labels, "fold": cv.assignment,
                                     "group": pool.groups}), "cv/folds.csv")


def _val_probabilities(run: dict) -> tuple[list[str], np.ndarray]:
    frame = tracking.load_probabilities(run["run_id"])
    return frame["id"].astype(str).tolist(), frame[oof.probability_columns(frame)].to_numpy()


def _test_probabilities(run: dict, test) -> np.ndarray:
    """A fold model's test probabilities, as its run logged them, in the test split's order."""
    frame = tracking.load_table(run["run_id"], "evaluation/test_probabilities.csv")
    frame = frame.set_index(frame["id"].astype(str)).loc[list(test.ids)]
    return frame[oof.probability_columns(frame)].to_numpy()


def _test_part(dataset, cache) -> Part | None:
    if "test" not in dataset.splits:
        return None
    split = dataset.splits["test"]
    return Part("test", cache.images("test"), None, split.ids, cache.split_digest("test"))


def _check_resumable(run_id: str) -> None:
    run = tracking.get_run(run_id)
    if run.data.tags.get("aigc.kind") != "cv":
        raise UserError(f"run {run_id} is not a cv run; --resume takes the id of a killed cross-validation run")
    if run.data.tags.get("aigc.model_uri"):
        raise UserError(f"run {run_id} already finished its cross-validation; nothing to resume")
