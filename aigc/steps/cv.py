"""The `cv` step: K stratified group folds, a nested train run per fold, out-of-fold probabilities,
TTA chosen on them, and the K fold models logged as one ensemble model.

Reads like the loop it runs: pool the labelled images -> cut folds (duplicates stay together) ->
train every fold not yet finished (resume) -> pseudo-label rounds (opt in) -> gather the OOF table
from the fold runs -> choose TTA on it -> log the OOF evaluation and the fold ensemble.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from aigc import ensemble, folds, inference, oof, tracking, training, tta
from aigc.tracking import recorders
from aigc.config import Config
from aigc.data import load_data
from aigc.errors import UserError
from aigc.evaluation import competition_metric, metric_function
from aigc.steps.train import Part, fit_and_record

FOLD, ROUND = "aigc.fold", "aigc.round"  # tags of a fold run: which fold, which pseudo-label round


def cross_validate(data_dir: str | Path, config: Config, resume: str | None = None) -> dict:
    """Cross-validate `config` on the competition folder; `resume`: a killed CV run's id (trains the missing folds)."""
    tracking.connect(config.tracking)  # before decoding anything: a wrong URI fails in seconds
    if resume:
        _check_resumable(resume)
    dataset, cache = load_data(data_dir, config.data)
    training.set_seed(config.train)
    pool = folds.pool_splits(dataset, cache, config.cv.pool_validation, config.data.near_duplicate_distance)
    assignment = folds.make_folds(pool.ids, pool.labels, pool.groups, config.cv.folds, config.train.seed,
                                  dataset.class_names)
    test = _test_part(dataset, cache)
    metric = competition_metric(dataset.layout.name, config.tracking.metric)
    rounds = config.cv.pseudo_label.rounds if config.cv.pseudo_label else 0
    pool_digest = _digest(cache.digest, pool.ids, pool.labels)

    with tracking.run("cv", f"{config.name}-cv{config.cv.folds}", run_id=resume) as parent:
        parent_id = parent.info.run_id
        if not resume:
            _log_inputs(config, dataset, cache, pool, assignment, metric, pool_digest)
        done = _finished_folds(parent_id)
        for round_ in range(rounds + 1):
            pseudo = _pseudo_labels(config, done, round_, test, dataset.num_classes) if round_ else {}
            for fold in range(config.cv.folds):
                if (fold, round_) not in done:
                    done[fold, round_] = _train_fold(config, dataset, cache, pool, assignment, fold, round_,
                                                     pseudo.get(fold), test, parent_id)
        fold_runs = [done[fold, rounds] for fold in range(config.cv.folds)]
        table = oof.oof_table(pool.ids, pool.labels, assignment,
                              {fold: _val_probabilities(run) for fold, run in enumerate(fold_runs)})
        choice = _choose_tta(config, fold_runs, pool, assignment, table, metric)
        result = _log_outcome(config, dataset, pool, table, fold_runs, choice, metric, test)
    return {"run_id": parent_id, "metric": metric, "score": result["score"], "folds": config.cv.folds,
            "fold_runs": [run["run_id"] for run in fold_runs], "model_uri": result["model_uri"], "tta": choice.transforms,
            "fold_spread": result["spread"]}


def _train_fold(config, dataset, cache, pool, assignment, fold: int, round_: int, pseudo, test, parent_id) -> dict:
    """One fold: train on the other folds (plus this fold's own pseudo-labelled test images), validate on it."""
    train_rows, val_rows = folds.fold_indices(assignment, fold)
    ids, labels = np.asarray(pool.ids), pool.labels
    train_images, train_labels, train_ids = pool.images.take(train_rows), labels[train_rows], tuple(ids[train_rows])
    if pseudo is not None:  # confident test predictions of this fold's own previous model: never its validation images
        rows, pseudo_labels = pseudo
        train_images = folds.PooledImages([train_images, folds.PooledImages([test.images]).take(rows)])
        train_labels = np.concatenate([train_labels, pseudo_labels])
        train_ids = train_ids + tuple(f"test/{test.ids[r]}" for r in rows)
    name = f"fold{fold}" + (f"-round{round_}" if round_ else "")
    train_part = Part(f"{name}-train", train_images, train_labels, train_ids,
                      _digest(cache.digest, train_ids, train_labels))
    val_part = Part(f"{name}-val", pool.images.take(val_rows), labels[val_rows], tuple(ids[val_rows]),
                    _digest(cache.digest, ids[val_rows], labels[val_rows]))
    print(f"[cv] {name}: training on {len(train_part.ids)} images, validating on {len(val_part.ids)}", flush=True)
    training.set_seed(config.train)
    # the cv run's budget is shared by its folds; the cv run calibrates its fold ensemble on the OOF probabilities
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, calibrate="none",
        budget_minutes=config.train.budget_minutes and config.train.budget_minutes / config.cv.folds))
    recorder = recorders.choose(config.tracking, parent_id=parent_id)
    result = fit_and_record(config, dataset, train_part, val_part, recorder, data_digest=cache.digest, test=test,
                            name=f"{config.name}-{name}", tags={FOLD: fold, ROUND: round_})
    return {"run_id": result["run_id"], "model_uri": result["model_uri"]}


def _finished_folds(parent_id: str) -> dict[tuple[int, int], dict]:
    """(fold, round) -> the fold run that finished it; a fold run that was killed is deleted, to be trained again."""
    finished = {}
    for run in tracking.child_runs(parent_id, "train"):
        tags = run.data.tags
        if run.info.status == "FINISHED" and tags.get("aigc.model_uri"):
            finished[int(tags[FOLD]), int(tags.get(ROUND, 0))] = {"run_id": run.info.run_id,
                                                                   "model_uri": tags["aigc.model_uri"]}
        else:
            print(f"[cv] fold {tags.get(FOLD)}: run {run.info.run_id} did not finish; deleting it and training the "
                  "fold again", flush=True)
            tracking.delete_run(run.info.run_id)
    return finished


def _pseudo_labels(config, done, round_: int, test, num_classes: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """fold -> (test rows, labels) its previous-round model predicted with at least the threshold's confidence."""
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


def _choose_tta(config, fold_runs, pool, assignment, table, metric) -> tta.TTAChoice:
    """Each fold model predicts its own validation images under every candidate transform: the OOF
    probabilities per transform, on which the set that helps is chosen (it must gain more than one image).
    With cv.tta false only the plain OOF predictions are scored (no TTA)."""
    labels, score = table["label"].to_numpy(), metric_function(metric)
    if not config.cv.tta:
        return tta.choose_tta({"identity": oof.probabilities_of(table)}, labels, score)
    order = {image_id: n for n, image_id in enumerate(table["id"].astype(str))}
    by_transform = {name: np.zeros((len(table), len(oof.probability_columns(table)))) for name in
                    ("identity", *tta.CANDIDATES)}
    for fold, run in enumerate(fold_runs):
        model = inference.load_model(run["model_uri"])
        _, val_rows = folds.fold_indices(assignment, fold)
        positions = [order[pool.ids[r]] for r in val_rows]
        images = pool.images.take(val_rows)
        for name in by_transform:
            by_transform[name][positions] = inference.predict_probabilities(model, images, config.data.batch_size,
                                                                            [name])
    return tta.choose_tta(by_transform, labels, score, min_gain=1 / len(labels))


def _log_outcome(config, dataset, pool, table, fold_runs, choice, metric, test) -> dict:
    """The parent's record: OOF evaluation (with the chosen TTA), fold spread, test average, fold ensemble."""
    evaluation = oof.oof_evaluation(table, dataset.class_names)
    spread = oof.fold_spread(oof.fold_scores(table, dataset.class_names))
    box = tracking.Outbox(tracking.current_run_id())
    order = [pool.ids.index(i) for i in table["id"]] if list(table["id"]) != list(pool.ids) else slice(None)
    tracking.stage_evaluation(box, evaluation, dataset.class_names, pool.images.take(np.arange(len(pool.ids))[order]),
                              table["label"].to_numpy(), list(table["id"]), oof.probabilities_of(table))
    box.table(table, "evaluation/val_probabilities.csv")  # the OOF table: every pooled id once, with its fold
    box.metrics({"final_log_loss": evaluation.metrics.get("log_loss"), **spread,
                 f"final_{metric}_with_tta": choice.score, f"final_{metric}_without_tta": choice.identity_score})
    box.table(pd.DataFrame(choice.trials, columns=["transforms", metric]), "tta/trials.csv")
    if test is not None:
        average = oof.average_folds([_test_probabilities(run, test) for run in fold_runs])
        box.table(pd.DataFrame(average, columns=oof.probability_columns(table)).assign(id=list(test.ids))
                  [["id", *oof.probability_columns(table)]], "cv/test_probabilities.csv")
    temperature = tracking.stage_temperature(box, oof.probabilities_of(table), table["label"].to_numpy(),
                                             "out-of-fold") if config.train.calibrate == "temperature" else None
    tracking.ship(box)
    description = ensemble.fold_ensemble([run["model_uri"] for run in fold_runs], [run["run_id"] for run in fold_runs],
                                         list(choice.transforms) if len(choice.transforms) > 1 else None, temperature)
    model_uri = tracking.log_ensemble_model(description)
    tracking.set_tags({"aigc.model_uri": model_uri, "aigc.tta": "+".join(choice.transforms),
                       "aigc.best_epoch": "", "mlflow.note.content": _summary(config, evaluation, spread, choice,
                                                                               metric, len(pool.ids))})
    return {"score": evaluation.metrics[metric], "spread": spread, "model_uri": model_uri}


def _summary(config, evaluation, spread, choice, metric, images) -> str:
    """The run's description in the MLflow UI: what was cross-validated and how it scored."""
    tta_text = (f"TTA {' + '.join(choice.transforms)} chosen on the OOF predictions "
                f"({choice.identity_score:.4f} -> {choice.score:.4f})" if len(choice.transforms) > 1
                else "no TTA transform helped on the OOF predictions")
    return (f"{config.cv.folds}-fold cross-validation of {config.model.name} ({config.name}) at "
            f"{config.data.image_size}x{config.data.image_size} on {images} pooled images. Out-of-fold {metric} "
            f"{evaluation.metrics[metric]:.4f} (fold mean {spread[f'fold_{metric}_mean']:.4f} ± "
            f"{spread[f'fold_{metric}_std']:.4f}); {tta_text}. The logged model is the mean of the "
            f"{config.cv.folds} fold models.")


def _log_inputs(config, dataset, cache, pool, assignment, metric, pool_digest) -> None:
    tracking.log_config(config)
    tracking.log_params({"num_classes": dataset.num_classes, "pooled_images": len(pool.ids)})
    tracking.set_tags({"aigc.layout": dataset.layout.name, "aigc.dataset_digest": cache.digest,
                       "aigc.val_digest": pool_digest, "aigc.metric": metric, "aigc.model_family": "cv-ensemble",
                       "aigc.registered_model": config.tracking.registered_model})
    tracking.log_dataset(pool.ids, pool.labels, pool_digest, str(dataset.root), f"{dataset.root.name}-pooled",
                         context="cross-validation")
    tracking.log_table(pd.DataFrame({"id": pool.ids, "label": pool.labels, "fold": assignment,
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


def _digest(*parts) -> str:
    """Identifies exactly these rows (the whole dataset's digest, ids, labels)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(repr(list(np.asarray(part).tolist()) if not isinstance(part, str) else part).encode())
    return digest.hexdigest()


def _check_resumable(run_id: str) -> None:
    run = tracking.get_run(run_id)
    if run.data.tags.get("aigc.kind") != "cv":
        raise UserError(f"run {run_id} is not a cv run; --resume takes the id of a killed cross-validation run")
    if run.data.tags.get("aigc.model_uri"):
        raise UserError(f"run {run_id} already finished its cross-validation; nothing to resume")
