"""Out-of-fold (OOF) predictions: one table per CV run, its scores, the fold spread, alignment of runs.

Every pooled image is predicted exactly once, by the fold model that never trained
on it, so the OOF table scores a whole CV run on all its images without bias, and
ensembles can be fitted on it (K times more images than a validation split).
No MLflow here: the CV step logs what these functions return.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from aigc.ensemble import combine
from aigc.errors import UserError, first_rows
from aigc.evaluation import SCORES, evaluate, probabilities_table


def oof_table(ids: Sequence[str], labels: np.ndarray, folds: np.ndarray,
              fold_predictions: Mapping[int, tuple[Sequence[str], np.ndarray]]) -> pd.DataFrame:
    """id, label, fold, p_0..p_{C-1}, in pooled order, from each fold's (validation ids, probabilities).

    Raises ValueError unless every pooled id is predicted exactly once, by its own fold.
    """
    ids = [str(i) for i in ids]
    folds = np.asarray(folds)
    position = {image_id: n for n, image_id in enumerate(ids)}
    times = np.zeros(len(ids), dtype=np.int64)
    probabilities = None
    for fold, (fold_ids, predicted) in sorted(fold_predictions.items()):
        predicted = np.asarray(predicted, dtype=np.float64)
        if len(fold_ids) != len(predicted):
            raise ValueError(f"fold {fold}: {len(fold_ids)} ids but {len(predicted)} rows of probabilities")
        unknown = [i for i in map(str, fold_ids) if i not in position]
        if unknown:
            raise ValueError(f"fold {fold} predicted ids that are not pooled: {first_rows(unknown)}")
        rows = np.array([position[str(i)] for i in fold_ids], dtype=np.int64)
        foreign = rows[folds[rows] != fold]
        if len(foreign):  # those images were in this fold model's training set
            raise ValueError(f"fold {fold} predicted images of other folds: {first_rows(ids[r] for r in foreign)}")
        if probabilities is None:
            probabilities = np.full((len(ids), predicted.shape[1]), np.nan)
        np.add.at(times, rows, 1)
        probabilities[rows] = predicted
    if probabilities is None or (times != 1).any():
        missing, repeated = np.flatnonzero(times == 0), np.flatnonzero(times > 1)
        absent = sorted({int(folds[r]) for r in missing})
        raise ValueError(f"out-of-fold predictions must cover every pooled image once: {len(missing)} missing "
                         f"(folds {absent}: {first_rows(ids[r] for r in missing)}), {len(repeated)} repeated "
                         f"({first_rows(ids[r] for r in repeated)})")
    table = probabilities_table(ids, np.asarray(labels), probabilities)
    table.insert(2, "fold", folds.astype(np.int64))
    return table


def probability_columns(table: pd.DataFrame) -> list[str]:
    """p_0..p_{C-1} in class order (not text order: p_10 comes after p_9)."""
    return sorted((c for c in table.columns if str(c).startswith("p_")), key=lambda c: int(str(c)[2:]))


def probabilities_of(table: pd.DataFrame) -> np.ndarray:
    return table[probability_columns(table)].to_numpy(dtype=np.float64)


def fold_scores(table: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per fold: fold, images, accuracy, f1_macro, f1_weighted, log_loss on that fold's images."""
    rows = []
    for fold, part in table.groupby("fold", sort=True):
        probabilities, labels = probabilities_of(part), part["label"].to_numpy()
        rows.append({"fold": int(fold), "images": len(part), **evaluate(probabilities, labels, class_names).metrics})
    return pd.DataFrame(rows, columns=["fold", "images", *SCORES])


def fold_spread(scores: pd.DataFrame) -> dict[str, float]:
    """fold_<metric>_mean and fold_<metric>_std (population std, as `np.std` of the fold scores)."""
    spread = {}
    for metric in SCORES:
        values = scores[metric].to_numpy(dtype=np.float64)
        spread |= {f"fold_{metric}_mean": float(values.mean()), f"fold_{metric}_std": float(values.std())}
    return spread


def average_folds(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Test-set probabilities of the fold models, averaged (what the fold ensemble predicts)."""
    shapes = {np.shape(p) for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"fold test probabilities differ in shape: {sorted(shapes)}")
    return combine([np.asarray(p, dtype=np.float64) for p in probabilities], np.ones(len(probabilities)), "soft")


@dataclasses.dataclass(frozen=True)
class AlignedOOF:
    """Several CV runs' OOF probabilities on the same images, in the same row order."""

    runs: tuple[str, ...]
    ids: tuple[str, ...]
    labels: np.ndarray
    probabilities: list[np.ndarray]  # one (images x classes) array per run


def align_oof(tables: Mapping[str, pd.DataFrame]) -> AlignedOOF:
    """Rows of every run's OOF table put in the first run's id order; refuses runs on other images.

    `tables` maps a run's name (what the message should call it) to its OOF table.
    """
    if len(tables) < 2:
        raise UserError(f"an ensemble fitted on out-of-fold predictions needs at least 2 CV runs; got {len(tables)}")
    names = list(tables)
    frames = {name: _indexed(name, table) for name, table in tables.items()}
    first = frames[names[0]]
    classes = len(probability_columns(first))
    for name in names[1:]:
        frame = frames[name]
        extra, absent = frame.index.difference(first.index), first.index.difference(frame.index)
        if len(extra) or len(absent):
            raise UserError(f"CV runs {names[0]} and {name} have different out-of-fold ids: {len(extra)} only in "
                            f"{name} ({first_rows(extra)}), {len(absent)} only in {names[0]} ({first_rows(absent)}); "
                            "fit an ensemble on CV runs of the same pooled data (same data folder, data.limit and "
                            "cv.pool_validation)")
        if len(probability_columns(frame)) != classes:
            raise UserError(f"CV runs {names[0]} and {name} predict {classes} and "
                            f"{len(probability_columns(frame))} classes; ensemble runs of the same competition")
        differ = first.index[first["label"].to_numpy() != frame.loc[first.index, "label"].to_numpy()]
        if len(differ):
            raise UserError(f"CV runs {names[0]} and {name} disagree on the labels of {len(differ)} images "
                            f"({first_rows(differ)}); ensemble runs trained on the same labels")
    return AlignedOOF(tuple(names), tuple(first.index), first["label"].to_numpy(dtype=np.int64),
                      [probabilities_of(frames[name].loc[first.index]) for name in names])


def _indexed(name: str, table: pd.DataFrame) -> pd.DataFrame:
    """The table indexed by id as text (a CSV of numeric ids reads back as numbers)."""
    ids = table["id"].astype(str)
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise UserError(f"CV run {name}: its out-of-fold table lists ids more than once ({first_rows(repeated)}); "
                        "it is not a finished CV run's table")
    return table.set_index(ids.rename(None))
