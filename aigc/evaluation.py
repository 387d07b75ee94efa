"""Metrics, confusion matrix, per-class report and figures from predictions (no MLflow here)."""

from __future__ import annotations

import textwrap
import warnings
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
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


def confusion_figure(evaluation: Evaluation, class_names):
    """Row-normalised confusion matrix: each row shows where that class's images went."""
    size = _confusion_inches(class_names)
    figure, axis = plt.subplots(figsize=(size, size))
    image = confusion_axis(axis, evaluation.confusion, class_names, "confusion matrix (row-normalised)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    return figure


def _confusion_inches(class_names) -> float:
    """One matrix's side: legible names and numbers up to 30 classes; unlabelled beyond, 10 inches
    (1000 px) still give each of 100 classes a 10 px cell, and larger only slows the PNG."""
    return 4 + len(class_names) * 0.35 if len(class_names) <= 30 else 10


def confusion_axis(axis, counts: np.ndarray, class_names, title: str):
    """Draw row-normalised `counts` (rows: true class) on `axis`; returns the image, for a colorbar."""
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if len(class_names) <= 30:  # beyond that names and numbers would not be legible
        ticks = np.arange(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=90)
        axis.set_yticks(ticks, class_names)
        for (row, column), value in np.ndenumerate(normalised):
            if value >= 0.01:
                axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if value > 0.5 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return image


def confusions_figure(counts: dict[str, np.ndarray], class_names, title: str):
    """Row-normalised confusion matrices side by side, each titled by its key, on one colour scale."""
    size = _confusion_inches(class_names)
    figure, axes = plt.subplots(1, len(counts), figsize=(size * len(counts) + 1, size + 0.8), squeeze=False,
                                layout="constrained")
    for axis, (name, matrix) in zip(axes[0], counts.items()):
        image = confusion_axis(axis, matrix, class_names, "\n".join(textwrap.wrap(name, int(size * 9))))
        axis.title.set_fontsize(9)
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8)
    figure.suptitle(title)
    return figure


def curves_figure(history: dict[str, list[float]]):
    """Accuracy and loss per epoch, train vs validation."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key in zip(axes, ("accuracy", "loss")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key, [])
            if values:
                axis.plot(range(len(values)), values, style, label=(prefix or "train_") + key)
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.legend()
    figure.tight_layout()
    return figure


def mistakes_figure(images: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, ids, class_names,
                    count: int = 16):
    """The most confident mistakes: thumbnail, true class, predicted class, confidence."""
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]])][:count]
    columns = 4
    rows = max(1, -(-len(wrong) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 3.2, rows * 3.6), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, wrong):
        axis.imshow(images[index], interpolation="nearest")  # crisp pixels; a third of the PNG
        # the whole id (a UUID wraps at its hyphens), legible at the UI's preview size
        name = "\n".join(textwrap.wrap(str(ids[index]), 24)) or "?"
        axis.set_title(f"{name}\ntrue {class_names[labels[index]]}, "
                       f"pred {class_names[predictions[index]]}\n{probabilities[index, predictions[index]]:.0%}",
                       fontsize=10)
    if not len(wrong):
        axes.flat[0].set_title("no mistakes")
    # Fixed spacing: tight_layout would measure all 16 titles, costing more than drawing them.
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.15, hspace=0.75)
    return figure


def probabilities_table(ids, labels, probabilities: np.ndarray) -> pd.DataFrame:
    """id, label (when known), p_0..p_{k-1}: what ensembles are built from."""
    frame = pd.DataFrame(probabilities, columns=[f"p_{i}" for i in range(probabilities.shape[1])])
    if labels is not None:
        frame.insert(0, "label", np.asarray(labels))
    frame.insert(0, "id", list(ids))
    return frame


def class_counts_figure(counts: dict[str, np.ndarray], class_names, title: str):
    """Images per class as bars, one bar per series (e.g. per split) in each class's group."""
    k = len(class_names)
    figure, axis = plt.subplots(figsize=(max(6, k * 0.12 + 4), 3.5))
    width = 0.8 / max(len(counts), 1)
    for offset, (label, values) in enumerate(counts.items()):
        axis.bar(np.arange(k) + offset * width, values, width, label=label)
    if k <= 30:
        axis.set_xticks(np.arange(k) + 0.4 - width / 2, class_names, rotation=90)
    axis.set_xlabel("class")
    axis.set_ylabel("images")
    axis.set_title(title)
    if len(counts) > 1:  # beside the plot, never over a bar
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    return figure


class PredictionFigure:
    """One image beside its predicted class probabilities (the top 5 and the true class), as RGB pixels, drawn
    epoch after epoch (four images every epoch of every run: the cost counts). The figure is laid out and drawn
    once, room left for the five longest class names, without what changes; each `draw` pastes that drawing back
    and draws the bars, their class names and the title over it (matplotlib's blitting): ~0.02 s, where drawing
    the whole figure took ~0.09 s."""

    def __init__(self, pixels: np.ndarray, class_names, label: int, image_id: str):
        from matplotlib import rcParams
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.transforms import offset_copy

        self.names, self.label = [str(name) for name in class_names], int(label)
        self.figure = Figure(figsize=(6, 2.6))  # not pyplot's: nothing to close, gone with the callback
        canvas = FigureCanvasAgg(self.figure)
        picture, self.axes = self.figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
        picture.imshow(np.asarray(pixels, dtype=np.uint8), interpolation="nearest")
        picture.axis("off")
        picture.set_title("\n".join(textwrap.wrap(image_id, 24)), fontsize=9)
        rows = range(min(5, len(self.names)))
        longest = sorted(range(len(self.names)), key=lambda c: len(self.names[c]))[-len(rows):]
        self.axes.set_yticks(rows, [self.names[c] for c in longest], fontsize=9)
        self.axes.set_title(self._title(9999), fontsize=9)
        self.axes.set_xlim(0, 1)
        self.axes.set_ylim(len(rows) - 0.5, -0.5)  # the most probable class on top
        self.figure.tight_layout()
        self.axes.set_yticklabels([])  # the tick marks stay; the names are drawn each epoch, beside them
        self.bars = list(self.axes.barh(rows, np.zeros(len(rows)), animated=True))
        beside = offset_copy(self.axes.get_yaxis_transform(), fig=self.figure, units="points",
                             x=-(rcParams["ytick.major.size"] + rcParams["ytick.major.pad"]))
        self.labels = [self.axes.text(0, row, "", transform=beside, ha="right", va="center", fontsize=9,
                                      animated=True) for row in rows]
        self.axes.title.set_animated(True)
        canvas.draw()  # everything but the animated artists
        self.background = canvas.copy_from_bbox(self.figure.bbox)

    def draw(self, probabilities: np.ndarray, epoch: int) -> np.ndarray:
        top = [int(i) for i in np.argsort(-probabilities)[:len(self.bars)]]
        shown = top if self.label in top else [*top[:-1], self.label]
        canvas = self.figure.canvas
        canvas.restore_region(self.background)
        for bar, label, c in zip(self.bars, self.labels, shown):
            bar.set_width(probabilities[c])
            bar.set_facecolor("tab:green" if c == self.label else "tab:gray")
            label.set_text(self.names[c])
            self.axes.draw_artist(bar)
            self.axes.draw_artist(label)
        self.axes.title.set_text(self._title(epoch))
        self.axes.draw_artist(self.axes.title)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    def _title(self, epoch: int) -> str:
        return f"epoch {epoch}: true {self.names[self.label]} (green)"


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


def members_figure(names, scores, ensemble_score: float, metric: str, in_sample: float | None = None):
    """Each member's held-out score beside the ensemble's cross-fitted one (and, hatched, the in-sample
    score the same ensemble reads on the rows it was fitted on: for reference, never a ranking)."""
    figure, axis = plt.subplots(figsize=(max(5, len(names) * 0.9 + 3), 3.5))
    axis.bar(range(len(names)), scores, color="tab:blue", label="members (held out)")
    axis.bar([len(names)], [ensemble_score], color="tab:orange", label="ensemble (cross-fitted)")
    labels = [*names, "ensemble"]
    if in_sample is not None:
        axis.bar([len(names) + 1], [in_sample], color="white", edgecolor="tab:orange", hatch="//",
                 label="ensemble in-sample (optimistic)")
        labels.append("in-sample")
    axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axis.set_ylabel(metric)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def folds_figure(scores: pd.DataFrame, metric: str):
    """A cross-validation's score on each fold's out-of-fold images, with the mean and +- one std band:
    how much the score moves with the images it is measured on."""
    values = scores[metric].to_numpy(dtype=float)
    figure, axis = plt.subplots(figsize=(max(4, len(values) * 0.8 + 2), 3.5))
    axis.bar(scores["fold"].astype(str), values, color="tab:blue", label="fold")
    mean, std = values.mean(), values.std()
    axis.axhline(mean, color="tab:orange", label=f"mean {mean:.4f}")
    axis.axhspan(mean - std, mean + std, color="tab:orange", alpha=0.15, label=f"± std {std:.4f}")
    for x, (value, images) in enumerate(zip(values, scores["images"])):
        axis.annotate(f"{value:.3f}\n{images} img", (x, value), ha="center", va="bottom", fontsize=7)
    axis.set(xlabel="fold", ylabel=metric, title=f"{metric} per fold (out-of-fold images)")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


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


def reliability_figure(curves: dict[str, np.ndarray], labels: np.ndarray, bins: int = CALIBRATION_BINS):
    """Reliability diagram: accuracy against confidence per bin, one line per probability set
    (e.g. {"before": p, "after temperature 1.8": q}), with each set's ECE in the legend."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    edges = np.linspace(0, 1, bins + 1)
    for name, probabilities in curves.items():
        confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == np.asarray(labels)
        which = np.clip((confidence * bins).astype(int), 0, bins - 1)
        filled = [b for b in range(bins) if np.any(which == b)]
        top.plot([confidence[which == b].mean() for b in filled], [correct[which == b].mean() for b in filled],
                 marker="o", label=f"{name} (ECE {expected_calibration_error(probabilities, labels):.3f})")
        bottom.hist(confidence, bins=edges, histtype="step", label=name)
    top.set(ylabel="accuracy", title="reliability", xlim=(0, 1), ylim=(0, 1))
    top.legend(fontsize=7)
    bottom.set(xlabel="confidence (top probability)", ylabel="images")
    figure.tight_layout()
    return figure


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
