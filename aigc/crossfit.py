"""Cross-fitting: what is fitted on held-out predictions is scored on rows it was not fitted on.

An ensemble's weights, a TTA set and a temperature are all chosen on held-out predictions
(validation or out-of-fold). Scored on the same rows, each flatters itself: greedy weights never
score below their best member there, a TTA transform that is noise can still gain an image or two.
So every such fit is done K times, each time without one part of the rows, and each part is scored
by the parameters fitted without it: the cross-fitted score is an honest estimate of the shipped
parameters, which are then fitted once more on all rows. The in-sample score (fitted and scored on
all rows) is kept beside it, for reference only.

A fit is a `Fitter`: `fit(rows) -> parameters` and `apply(parameters, rows) -> probabilities` of
those rows, both over one fixed table of held-out predictions. `with_temperature` chains a
temperature after any fitter, so the temperature is fitted on exactly what it will scale.
No MLflow here: steps log what `cross_fit` returns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aigc.evaluation import apply_temperature, fit_temperature

FOLDS = 5  # parts a validation split is cut into when it has no folds of its own


@dataclass(frozen=True)
class Fitter:
    fit: Callable[[np.ndarray], Any]  # row indices -> parameters fitted on those rows
    apply: Callable[[Any, np.ndarray], np.ndarray]  # (parameters, row indices) -> probabilities of those rows


@dataclass(frozen=True)
class CrossFit:
    parameters: Any  # fitted on all rows: what the model ships
    probabilities: np.ndarray  # each row by the parameters fitted without its part (cross-fitted)
    in_sample: np.ndarray  # each row by `parameters` (fitted on it too): for reference only
    parts: np.ndarray  # the part (0..K-1) each row was held out in


def cross_fit(fitter: Fitter, labels: np.ndarray, parts: np.ndarray | None = None, seed: int = 0) -> CrossFit:
    """Fit K times, each without one part of the rows, and score each part by the fit that never saw it.

    `parts`: which part each row belongs to; a cv run's folds (its out-of-fold rows keep the folds they
    were predicted in, duplicates together), else `split(labels)`.
    """
    labels = np.asarray(labels)
    parts = split(labels, seed=seed) if parts is None else np.asarray(parts)
    rows = np.arange(len(labels))
    held_out = None
    for part in np.unique(parts):
        inside = parts == part
        predicted = fitter.apply(fitter.fit(rows[~inside]), rows[inside])
        if held_out is None:
            held_out = np.zeros((len(labels), predicted.shape[1]))
        held_out[inside] = predicted
    parameters = fitter.fit(rows)
    return CrossFit(parameters, held_out, fitter.apply(parameters, rows), parts)


def once_per_rows(fit: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], Any]:
    """`fit`, run once per set of rows (a fit is a pure function of its rows): the cross-fit of a temperature
    after it (with_temperature) and a per-part table ask again for the fits the plain cross-fit made."""
    done: dict[bytes, Any] = {}

    def fit_once(rows):
        key = np.asarray(rows, dtype=np.int64).tobytes()
        if key not in done:
            done[key] = fit(rows)
        return done[key]

    return fit_once


def split(labels: np.ndarray, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A part (0..k-1) per row, stratified by label where every part can hold each class (else by row)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = np.asarray(labels)
    k = max(2, min(k, len(labels)))
    stratified = np.bincount(labels).max() >= k
    splitter = (StratifiedKFold if stratified else KFold)(n_splits=k, shuffle=True, random_state=seed)
    parts = np.zeros(len(labels), dtype=np.int64)
    with warnings.catch_warnings():  # a class with fewer images than parts is spread as far as it goes
        warnings.simplefilter("ignore", UserWarning)
        for part, (_, inside) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            parts[inside] = part
    return parts


def fixed(probabilities: np.ndarray) -> Fitter:
    """Nothing fitted: the probabilities as they are (a base for `with_temperature`)."""
    return Fitter(lambda rows: None, lambda _, rows: probabilities[rows])


def with_temperature(fitter: Fitter, labels: np.ndarray) -> Fitter:
    """`fitter`, then a temperature fitted on its output on the same rows: parameters (inner, T)."""

    def fit(rows):
        inner = fitter.fit(rows)
        return inner, fit_temperature(fitter.apply(inner, rows), labels[rows])

    def apply(parameters, rows):
        inner, temperature = parameters
        return apply_temperature(fitter.apply(inner, rows), temperature)

    return Fitter(fit, apply)


def tta(by_transform: Mapping[str, np.ndarray], labels: np.ndarray, score) -> Fitter:
    """The TTA set chosen on the rows (aigc.tta.choose_tta, a transform must gain more than one image):
    parameters are the transform names; applied, the mean of their probabilities."""
    from aigc.tta import choose_tta

    def fit(rows):
        chosen = choose_tta({name: p[rows] for name, p in by_transform.items()}, labels[rows], score,
                            min_gain=1 / len(rows))
        return chosen.transforms

    def apply(transforms, rows):
        return np.mean([by_transform[name][rows] for name in transforms], axis=0)

    return Fitter(once_per_rows(fit), apply)


def ensemble(method: str, members: Sequence[np.ndarray], labels: np.ndarray, score, top_k: int | None = None,
             ) -> Fitter:
    """Ensemble weights over `members` (aigc.ensemble.choose_weights), optionally only the `top_k` members
    that score best on the rows (the rest weigh 0): member selection is a fit like the weights."""
    from aigc.ensemble import choose_weights, combine

    def fit(rows):
        scores = np.array([score(labels[rows], p[rows].argmax(axis=1)) for p in members])
        chosen = np.argsort(-scores, kind="stable")[:top_k] if top_k else np.arange(len(members))
        weights = np.zeros(len(members))
        weights[chosen] = choose_weights(method, [members[i][rows] for i in chosen], labels[rows], score,
                                         list(scores[chosen]))
        return weights

    def apply(weights, rows):
        used = np.flatnonzero(weights)
        return combine([members[i][rows] for i in used], weights[used], "hard" if method == "hard" else "soft")

    return Fitter(once_per_rows(fit), apply)


@dataclass(frozen=True)
class Finish:
    """The test-time augmentation and temperature a model ships with, fitted on its held-out predictions
    under every candidate transform (`views`: name -> probabilities), each cross-fitted."""

    chooser: Fitter  # the TTA choice (aigc.tta.choose_tta) over the views
    plain: CrossFit  # TTA only: parameters are the transform names
    fitted: CrossFit  # TTA, then the temperature fitted on its output (`plain` itself without calibration)
    views: Mapping[str, np.ndarray]

    @property
    def transforms(self) -> tuple[str, ...]:
        return self.plain.parameters

    @property
    def temperature(self) -> float | None:
        return self.fitted.parameters[1] if self.fitted is not self.plain else None

    def tta_scores(self, labels: np.ndarray, score, metric: str) -> dict[str, float]:
        """final_<metric>_with_tta (cross-fitted), _with_tta_in_sample (for reference), _without_tta (held out)."""
        def of(probabilities):
            return float(score(labels, probabilities.argmax(axis=1)))

        return {f"final_{metric}_with_tta": of(self.plain.probabilities),
                f"final_{metric}_with_tta_in_sample": of(self.plain.in_sample),
                f"final_{metric}_without_tta": of(self.views["identity"])}

    def tta_trials(self, labels: np.ndarray, score, metric: str) -> pd.DataFrame:
        """Every set the shipped choice tried on all the rows, with its (in-sample) score."""
        from aigc.tta import choose_tta

        choice = choose_tta(self.views, labels, score, min_gain=1 / len(labels))
        return pd.DataFrame(choice.trials, columns=["transforms", f"{metric}_in_sample"])

    def tta_per_part(self, labels: np.ndarray, score, metric: str) -> pd.DataFrame:
        """Per part: the TTA set fitted on the other parts and what it scores on this one."""
        rows = []
        for part in np.unique(self.plain.parts):
            inside = self.plain.parts == part
            rows.append({"part": int(part), "images": int(inside.sum()),
                         "transforms": "+".join(self.chooser.fit(np.flatnonzero(~inside))),
                         metric: score(labels[inside], self.plain.probabilities[inside].argmax(axis=1))})
        return pd.DataFrame(rows)


def finish(views: Mapping[str, np.ndarray], labels: np.ndarray, score, parts: np.ndarray | None = None,
           calibrate: bool = False, seed: int = 0) -> Finish:
    """Choose the TTA set (and, `calibrate`, a temperature after it) on held-out predictions, cross-fitted in
    `parts` (a cv run's folds; else stratified parts of the rows). With only "identity" nothing is chosen."""
    labels = np.asarray(labels)
    parts = split(labels, seed=seed) if parts is None else np.asarray(parts)
    chooser = tta(views, labels, score)
    plain = cross_fit(chooser, labels, parts)
    fitted = cross_fit(with_temperature(chooser, labels), labels, parts) if calibrate else plain
    return Finish(chooser, plain, fitted, views)
