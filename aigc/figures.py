"""Every figure aigc logs, drawn with matplotlib from numbers aigc.evaluation computed (no MLflow here).

Figures are drawn on every run, fold and trial, so their cost counts: grids of pictures are one image
(`thumbnails`), not one axes per picture, and fixed spacing stands in for tight_layout wherever many
titles would have to be measured.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from aigc.evaluation import CALIBRATION_BINS, Evaluation, expected_calibration_error


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
    # the whole id (a UUID wraps at its hyphens), legible at the UI's preview size
    names = ["\n".join(textwrap.wrap(str(ids[i]), 24)) or "?" for i in wrong]
    titles = [f"{name}\ntrue {class_names[labels[i]]}, pred {class_names[predictions[i]]}\n"
              f"{probabilities[i, predictions[i]]:.0%}" for name, i in zip(names, wrong)]
    return thumbnails([images[i] for i in wrong], titles, columns=4, width=3.2, height=3.6, fontsize=10,
                      empty="no mistakes")


def thumbnails(images, titles, columns: int, width: float, height: float, fontsize: float, empty: str = "no images"):
    """Pictures in a grid, each under its title (lines split by newlines), in cells of `width` x `height`
    inches: pasted into one array and drawn as one image with crisp pixels (`empty`: the text shown without
    any). Measured against an axes per picture: 16 mistakes 0.85 -> 0.54 s, a 7-picture sample grid
    1.0 -> 0.08 s (the titles' text is most of what is left)."""
    if not len(images):
        figure = plt.figure(figsize=(width, 1))
        figure.text(0.5, 0.5, empty, ha="center", va="center")
        return figure
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    pictures = [np.asarray(image, dtype=np.uint8) for image in images]
    high, wide = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    lines = max(title.count("\n") + 1 for title in titles)
    side = min(width * 0.92, height - lines * fontsize * 1.3 / 72 - 0.1)  # inches for the picture, under its title
    per_inch = max(high, wide) / side  # array pixels per inch
    cell_w, cell_h = round(width * per_inch), round(height * per_inch)
    margin = round(0.03 * cell_h)  # below each picture
    canvas = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
    figure = plt.figure(figsize=(columns * width, rows * height))
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set_axis_off()
    for n, (picture, title) in enumerate(zip(pictures, titles)):
        row, column = divmod(n, columns)
        top = (row + 1) * cell_h - margin - picture.shape[0]
        left = column * cell_w + (cell_w - picture.shape[1]) // 2
        canvas[top:top + picture.shape[0], left:left + picture.shape[1]] = (
            picture if picture.ndim == 3 else picture[..., None])
        axis.text((column + 0.5) * cell_w, top - margin / 2, title, ha="center", va="bottom", fontsize=fontsize)
    axis.imshow(canvas, interpolation="nearest", aspect="auto")
    return figure


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

