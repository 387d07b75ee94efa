"""Cross-fitting (aigc.crossfit) and score intervals: what is fitted on held-out predictions is never scored
on the rows it was fitted on. Pure numbers, no MLflow: each takes milliseconds."""

import numpy as np

from aigc import crossfit
from aigc.evaluation import apply_temperature, expected_calibration_error, metric_function, score_intervals

CLASSES = 5
accuracy = metric_function("accuracy", CLASSES)


def noise(count: int, rows: int, seed: int) -> list[np.ndarray]:
    """`count` 'models' that know nothing: random probabilities."""
    rng = np.random.default_rng(seed)
    return [rng.dirichlet(np.ones(CLASSES), rows) for _ in range(count)]


def test_a_greedy_ensemble_of_noise_beats_its_members_in_sample_and_is_near_chance_cross_fitted():
    labels = np.random.default_rng(1).integers(0, CLASSES, 600)
    members = noise(12, len(labels), seed=2)
    fitted = crossfit.cross_fit(crossfit.ensemble("greedy", members, labels, accuracy), labels)
    alone = [accuracy(labels, p.argmax(axis=1)) for p in members]
    in_sample, cross_fitted = (accuracy(labels, p.argmax(axis=1)) for p in (fitted.in_sample, fitted.probabilities))
    assert in_sample > max(alone)  # chosen and weighted on these rows: it flatters itself
    assert abs(cross_fitted - 1 / CLASSES) < 0.05 and cross_fitted < in_sample - 0.02  # honest: chance


def test_choosing_the_top_members_is_part_of_the_cross_fitted_fit():
    labels = np.random.default_rng(1).integers(0, CLASSES, 600)
    members = noise(12, len(labels), seed=2)
    fitted = crossfit.cross_fit(crossfit.ensemble("weighted", members, labels, accuracy, top_k=3), labels)
    best = np.argsort([-accuracy(labels, p.argmax(axis=1)) for p in members], kind="stable")[:3]
    assert set(np.flatnonzero(fitted.parameters)) == set(best)  # shipped: the top 3 on all rows, the rest weigh 0
    assert abs(accuracy(labels, fitted.probabilities.argmax(axis=1)) - 1 / CLASSES) < 0.05


def test_noise_transforms_raise_the_in_sample_tta_score_but_not_the_cross_fitted_one():
    """Transforms that only jitter the predictions: chosen on the rows they are scored on, some always seem to
    help; chosen on the other parts, they help nothing on average (a few noisy datasets, to average the luck)."""
    in_sample_gains, cross_fitted_gains = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, CLASSES, 400)
        identity = rng.dirichlet(np.ones(CLASSES), len(labels))
        identity[np.arange(len(labels)), labels] += 0.6 * (rng.random(len(labels)) < 0.6)  # a weak real model
        views = {"identity": identity / identity.sum(axis=1, keepdims=True)}
        for name in ("hflip", "zoom", "crop_tl", "crop_br", "shift_up", "shift_left"):
            jittered = views["identity"] + 0.5 * rng.dirichlet(np.ones(CLASSES), len(labels))
            views[name] = jittered / jittered.sum(axis=1, keepdims=True)
        fitted = crossfit.cross_fit(crossfit.tta(views, labels, accuracy), labels)
        plain = accuracy(labels, views["identity"].argmax(axis=1))
        in_sample_gains.append(accuracy(labels, fitted.in_sample.argmax(axis=1)) - plain)
        cross_fitted_gains.append(accuracy(labels, fitted.probabilities.argmax(axis=1)) - plain)
    assert min(in_sample_gains) >= 0 and np.mean(in_sample_gains) > 0.002  # never below plain where chosen
    assert np.mean(cross_fitted_gains) <= 0  # no real gain where not chosen


def test_a_cross_fitted_temperature_calibrates_and_never_changes_the_class():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, CLASSES, 1000)
    logits = rng.normal(size=(len(labels), CLASSES))
    logits[np.arange(len(labels)), labels] += 1.5
    overconfident = np.exp(4 * logits) / np.exp(4 * logits).sum(axis=1, keepdims=True)
    fitted = crossfit.cross_fit(crossfit.with_temperature(crossfit.fixed(overconfident), labels), labels)
    _, temperature = fitted.parameters
    assert temperature > 2  # it softens an overconfident model
    assert expected_calibration_error(fitted.probabilities, labels) < 0.5 * expected_calibration_error(
        overconfident, labels)
    assert (fitted.probabilities.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    assert np.allclose(fitted.in_sample, apply_temperature(overconfident, temperature))


def test_every_row_is_scored_by_a_fit_that_never_saw_it():
    labels = np.tile(np.arange(CLASSES), 20)
    seen = []

    def fit(rows):
        seen.append(set(rows.tolist()))
        return set(rows.tolist())

    def apply(fitted_on, rows):
        assert not fitted_on & set(rows.tolist()) or len(fitted_on) == len(labels)
        return np.eye(CLASSES)[labels[rows]]

    result = crossfit.cross_fit(crossfit.Fitter(fit, apply), labels)
    assert len(seen) == crossfit.FOLDS + 1 and seen[-1] == set(range(len(labels)))  # K parts, then all rows
    assert sorted(np.bincount(result.parts).tolist()) == [20] * crossfit.FOLDS
    assert (np.bincount(labels[result.parts == 0]) == 4).all()  # stratified


def test_a_temperature_after_a_fit_reuses_the_fits_the_plain_cross_fit_made():
    """Each TTA choice or ensemble fit is made once per set of rows: the temperature's cross-fit (same parts)
    and the per-part table ask again for the same ones, and get what was fitted, not a second fit."""
    labels = np.tile(np.arange(CLASSES), 20)
    views = dict(zip(("identity", "hflip", "zoom"), noise(3, len(labels), seed=6)))
    made = []
    counted = crossfit.Fitter(lambda rows: made.append(len(rows)) or "identity", lambda _, rows: views["identity"][rows])
    once = crossfit.Fitter(crossfit.once_per_rows(counted.fit), counted.apply)
    parts = crossfit.split(labels)
    crossfit.cross_fit(once, labels, parts)
    crossfit.cross_fit(crossfit.with_temperature(once, labels), labels, parts)
    assert len(made) == crossfit.FOLDS + 1  # K parts and all rows, once each
    done = crossfit.finish(views, labels, accuracy, parts, calibrate=True)  # what a train or cv run ships
    assert done.fitted.parameters[0] is done.plain.parameters  # the temperature's TTA set: the one chosen
    without_first = np.flatnonzero(parts != 0)
    assert done.chooser.fit(without_first) is done.chooser.fit(without_first)  # the per-part table's: too


def test_intervals_hold_the_score_and_shrink_with_more_images():
    rng = np.random.default_rng(6)

    def probabilities(rows):
        labels = rng.integers(0, CLASSES, rows)
        p = rng.dirichlet(np.ones(CLASSES), rows)
        p[np.arange(rows), labels] += rng.random(rows)
        return p / p.sum(axis=1, keepdims=True), labels

    small, large = (score_intervals(*probabilities(rows)) for rows in (100, 5000))
    for name in ("accuracy", "f1_macro", "f1_weighted", "log_loss"):
        assert small[f"{name}_low"] < small[f"{name}_high"]
        assert large[f"{name}_high"] - large[f"{name}_low"] < 0.5 * (small[f"{name}_high"] - small[f"{name}_low"])
    p, labels = probabilities(400)
    found = score_intervals(p, labels)
    value = accuracy(labels, p.argmax(axis=1))
    assert found["accuracy_low"] < value < found["accuracy_high"]
    assert found == score_intervals(p, labels)  # seeded: the same interval every time
