"""What a finished run shows, built from plain values: its scores, tables, figures and pages (no MLflow here).

Each function returns a Report; the run's outbox writes it as handed (tracking.Outbox.stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aigc import evaluation as ev, figures, pages
from aigc.scores import IMAGES


@dataclass
class Report:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)  # artifact path -> matplotlib figure | DataFrame (CSV) | str

    def add(self, other: Report) -> Report:
        self.metrics.update(other.metrics)
        self.tags.update(other.tags)
        self.artifacts.update(other.artifacts)
        return self


def evaluation_report(evaluation, class_names, images, labels, ids, probabilities, history=None,
                      source=None) -> Report:
    """Everything a finished train/ensemble/cv run shows: the final scores with their intervals and image count,
    and (`source`, a scores.Source) which rows they are on."""
    metrics = {**{f"final_{key}": value for key, value in {**evaluation.metrics, **evaluation.intervals}.items()},
               IMAGES: evaluation.images,
               # calibration: are the probabilities worth averaging, thresholding or trusting? (log loss: final_log_loss)
               **{f"calibration_{key}": value for key, value in ev.calibration_metrics(probabilities, labels).items()
                  if key != "log_loss"}}
    artifacts = {
        "evaluation/per_class.csv": evaluation.per_class,
        "evaluation/confusion_counts.csv": ev.confusion_table(evaluation, class_names),
        "evaluation/confusion_matrix.png": figures.confusion_figure(evaluation, class_names),
        "evaluation/confusion_examples.html": pages.confusion_html(
            images, labels, evaluation.predictions, probabilities.max(axis=1), class_names, ids,
            scored_on=source.phrase(evaluation.images) if source else ""),
        "evaluation/mistakes.png": figures.mistakes_figure(images, probabilities, labels, ids, class_names),
        "evaluation/val_probabilities.csv": ev.probabilities_table(ids, labels, probabilities),
        "evaluation/reliability.png": figures.reliability_figure({"model": probabilities}, labels),
    }
    if history:
        artifacts["evaluation/curves.png"] = figures.curves_figure(history)
    return Report(metrics, source.tags() if source is not None else {}, artifacts)


def temperature_report(temperature: float, labels, *, before, after, after_in_sample, held_out: str) -> Report:
    """train.calibrate: temperature, as fitted (aigc.crossfit): T, the scores before and after it on held-out
    probabilities (`after`: each row by a T fitted without it; `after_in_sample`: by the T shipped, for
    reference) and the reliability diagram; `held_out` names the rows ("validation", "out-of-fold")."""
    metrics = {"calibration_temperature": temperature,
               **{f"uncalibrated_{k}": v for k, v in ev.calibration_metrics(before, labels).items()},
               **{f"calibrated_{k}": v for k, v in ev.calibration_metrics(after, labels).items()},
               **{f"calibrated_{k}_in_sample": v for k, v in ev.calibration_metrics(after_in_sample, labels).items()}}
    figure = figures.reliability_figure({f"{held_out}, uncalibrated": before,
                                         f"temperature {temperature:.2f} (cross-fitted)": after}, labels)
    return Report(metrics, artifacts={"evaluation/reliability_temperature.png": figure})


def finish_report(finish, labels, score, metric: str, held_out: str) -> Report:
    """A model's TTA set and temperature as fitted (aigc.crossfit.Finish): the scores with and without TTA, the
    sets tried (tta/trials.csv) and the set each part got from the others (tta/cross_fitted.csv), the temperature."""
    report = Report()
    if len(finish.views) > 1:
        report.add(Report(finish.tta_scores(labels, score, metric),
                          artifacts={"tta/trials.csv": finish.tta_trials(labels, score, metric),
                                     "tta/cross_fitted.csv": finish.tta_per_part(labels, score, metric)}))
    if finish.temperature is not None:
        report.add(temperature_report(finish.temperature, labels, before=finish.plain.probabilities,
                                      after=finish.fitted.probabilities, after_in_sample=finish.fitted.in_sample,
                                      held_out=held_out))
    return report
