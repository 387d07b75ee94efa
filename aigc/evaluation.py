"""Metrics, confusion matrix, per-class report, intervals and calibration from predictions (no MLflow here;
their figures: aigc.figures)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.metrics import log_loss as sklearn_log_loss

METRICS = ("accuracy", "f1_macro", "f1_weighted")  # scores of the predicted class: higher is better
SCORES = (*METRICS, "log_loss")  # every final score a run logs (`final_<score>`); log loss: lower is better
CONFIDENCE = 0.95  # of every interval aigc logs
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # accuracy, f1_macro, f1_weighted, log_loss
    per_class: pd.DataFrame  # class, precision, recall, f1, support
    confusion: np.ndarray  # counts, rows = true class
    predictions: np.ndarray
    intervals: dict[str, float] = field(default_factory=dict)  # <score>_low / _high, when asked for

    @property
    def images(self) -> int:
        return len(self.predictions)


def evaluate(probabilities: np.ndarray, labels: np.ndarray, class_names, with_intervals: bool = False) -> Evaluation:
    """Scores of class probabilities against true labels (and their 95 % intervals: `score_intervals`)."""
    predictions = probabilities.argmax(axis=1)
    classes = np.arange(len(class_names))
    metrics = {name: metric_function(name, len(class_names))(labels, predictions) for name in METRICS}
    metrics["log_loss"] = log_loss(labels, probabilities)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predictions, labels=classes,
                                                                     zero_division=0)
    per_class = pd.DataFrame({"class": list(class_names), "precision": precision.round(4), "recall": recall.round(4),
                              "f1": f1.round(4), "support": support})  # rounded: the table is read, not computed on
    return Evaluation({k: float(v) for k, v in metrics.items()}, per_class,
                      confusion_matrix(labels, predictions, labels=classes), predictions,
                      score_intervals(probabilities, np.asarray(labels)) if with_intervals else {})


def competition_metric(layout: str, configured: str = "auto") -> str:
    """accuracy for deepfake, weighted F1 for gic (the report's averaging), unless configured."""
    if configured != "auto":
        return configured
    return "accuracy" if layout == "deepfake" else "f1_weighted"


def confusion_table(evaluation: Evaluation, class_names) -> pd.DataFrame:
    """Counts with class names on both axes (true rows, predicted columns)."""
    frame = pd.DataFrame(evaluation.confusion, columns=[f"pred_{c}" for c in class_names])
    frame.insert(0, "true", list(class_names))
    return frame


def probabilities_table(ids, labels, probabilities: np.ndarray) -> pd.DataFrame:
    """id, label (when known), p_0..p_{k-1}: what ensembles are built from."""
    frame = pd.DataFrame(probabilities, columns=[f"p_{i}" for i in range(probabilities.shape[1])])
    if labels is not None:
        frame.insert(0, "label", np.asarray(labels))
    frame.insert(0, "id", list(ids))
    return frame


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """Exact McNemar test: do two models' errors on the same images differ by more than chance?
    `only_a`, `only_b`: the images only model a (only model b) got right."""
    from scipy.stats import binomtest

    only_a, only_b = int(only_a), int(only_b)
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def disagreements(first: pd.DataFrame, second: pd.DataFrame,
                  names: tuple[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two models' held-out probability tables (id, label, p_*), aligned by id, called `names`
    (e.g. champion, challenger) -> (McNemar's 2x2 table of right/wrong counts, the images they
    classify differently).

    The images come most damning first: ordered by how confident the model that got it wrong
    ("loser"; "both" when neither is right) was in its wrong class.
    """
    one, two = names
    columns = [c for c in first.columns if c.startswith("p_")]
    b = second.set_index("id").loc[first["id"]]
    pa, pb, labels = first[columns].to_numpy(), b[columns].to_numpy(), first["label"].to_numpy()
    a_class, b_class = pa.argmax(1), pb.argmax(1)
    right_a, right_b = a_class == labels, b_class == labels
    table = pd.DataFrame([[np.sum(right_a & right_b), np.sum(right_a & ~right_b)],
                          [np.sum(~right_a & right_b), np.sum(~right_a & ~right_b)]],
                         index=pd.Index([f"{one} right", f"{one} wrong"], name="images"),
                         columns=[f"{two} right", f"{two} wrong"]).reset_index()
    rows = np.flatnonzero(a_class != b_class)
    a_wrong = np.where(right_a, 0.0, pa.max(1))
    b_wrong = np.where(right_b, 0.0, pb.max(1))
    differ = pd.DataFrame({
        "id": first["id"].to_numpy()[rows], "label": labels[rows],
        f"{one}_class": a_class[rows], f"{one}_p": pa.max(1)[rows].round(4),
        f"{two}_class": b_class[rows], f"{two}_p": pb.max(1)[rows].round(4),
        "loser": np.where(right_a, two, np.where(right_b, one, "both"))[rows],
        "loser_confidence": np.maximum(a_wrong, b_wrong)[rows].round(4)})
    return table, differ.sort_values("loser_confidence", ascending=False, kind="stable").reset_index(drop=True)


def metric_function(name: str, num_classes: int):
    """score(labels, predictions) for a competition metric name: the one accuracy and F1 every run reports
    (F1 averaged over all `num_classes` classes, a class absent from both labels and predictions scoring 0)."""
    if name == "accuracy":
        return lambda labels, predictions: float(accuracy_score(labels, predictions))
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; one of {', '.join(METRICS)}")
    average, classes = name.removeprefix("f1_"), np.arange(num_classes)
    return lambda labels, predictions: float(f1_score(labels, predictions, labels=classes, average=average,
                                                      zero_division=0))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The one log loss every run reports: sklearn's, over all the probabilities' classes."""
    # float32 softmax rows sum to 1 only within ~1e-7; sklearn checks the sums
    normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
    return float(sklearn_log_loss(labels, normalised, labels=np.arange(probabilities.shape[1])))


def score_intervals(probabilities: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """A 95 % interval for every score of `evaluate`: `<score>_low`, `<score>_high`.

    Accuracy: Wilson's score interval (a binomial proportion). F1 and log loss have no closed form:
    percentile bootstrap over the images (BOOTSTRAP_RESAMPLES resamples, seeded, so reruns agree).
    The interval says how far the score could move on another draw of as many images; it does not
    cover a shift between these images and the test set.
    """
    from scipy.stats import binomtest, bootstrap

    labels, predictions = np.asarray(labels), probabilities.argmax(axis=1)
    right = int(np.sum(predictions == labels))
    wilson = binomtest(right, len(labels)).proportion_ci(CONFIDENCE, method="wilson")
    found = {"accuracy_low": float(wilson.low), "accuracy_high": float(wilson.high)}
    picked = probabilities[np.arange(len(labels)), labels] / probabilities.sum(axis=1)
    statistics = {"f1_macro": ((labels, predictions), _f1_resampled("macro", probabilities.shape[1])),
                  "f1_weighted": ((labels, predictions), _f1_resampled("weighted", probabilities.shape[1])),
                  "log_loss": ((-np.log(np.clip(picked, 1e-15, 1.0)),), np.mean)}
    with warnings.catch_warnings():  # one image, or all alike: a degenerate (zero-width) interval is the answer
        warnings.simplefilter("ignore")
        for name, (data, statistic) in statistics.items():
            found_interval = bootstrap(data, statistic, paired=len(data) > 1, vectorized=True, method="percentile",
                                       confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES, batch=100,
                                       random_state=np.random.default_rng(seed)).confidence_interval
            found |= {f"{name}_low": float(found_interval.low), f"{name}_high": float(found_interval.high)}
    return found


def _f1_resampled(average: str, num_classes: int):
    """F1 of many resamples at once (the bootstrap's vectorised statistic): per resample a confusion
    matrix from one bincount, then sklearn's formula with zero_division=0 over all classes."""

    def statistic(labels, predictions, axis=-1):
        labels, predictions = np.atleast_2d(labels), np.atleast_2d(predictions)
        batch, size = labels.shape[0], num_classes * num_classes
        cells = (np.arange(batch)[:, None] * size + labels * num_classes + predictions).ravel()
        confusion = np.bincount(cells, minlength=batch * size).reshape(batch, num_classes, num_classes)
        right, support, predicted = (np.diagonal(confusion, axis1=1, axis2=2), confusion.sum(axis=2),
                                     confusion.sum(axis=1))
        f1 = np.divide(2 * right, support + predicted, out=np.zeros(right.shape), where=support + predicted > 0)
        if average == "macro":
            return f1.mean(axis=1)
        return (f1 * support).sum(axis=1) / np.maximum(support.sum(axis=1), 1)

    return statistic


# --- calibration: do the probabilities mean what they say? -----------------------------------

CALIBRATION_BINS = 15  # equal-width confidence bins, the usual choice for ECE (Guo et al. 2017)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |accuracy - confidence| over confidence bins, weighted by the images in each bin."""
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    error = 0.0
    for b in np.unique(which):
        mine = which == b
        error += mine.mean() * abs(correct[mine].mean() - confidence[mine].mean())
    return float(error)


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance between the probability vector and the one-hot label (multi-class Brier)."""
    one_hot = np.eye(probabilities.shape[1])[np.asarray(labels)]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def calibration_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ece, brier and log_loss of class probabilities against true labels."""
    return {"ece": expected_calibration_error(probabilities, labels), "brier": brier_score(probabilities, labels),
            "log_loss": log_loss(labels, probabilities)}


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the log loss of softmax(log p / T) on held-out probabilities
    (validation or out-of-fold: never the training images, which the model is overconfident on)."""
    from scipy.optimize import minimize_scalar

    logits = np.log(np.clip(probabilities, 1e-12, 1.0))
    found = minimize_scalar(lambda log_t: log_loss(labels, _softmax(logits / np.exp(log_t))),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens overconfident probabilities; the predicted class never changes."""
    return _softmax(np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
