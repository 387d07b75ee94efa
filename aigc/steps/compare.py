"""The `compare` step: runs side by side on the images both have held-out predictions for.

Reads like what it does: check every run (it exists, logged held-out probabilities, says which images
they are on) -> the first run is the reference, A; cut it and each other run (B, C, ...) to the ids both
tables hold -> per pair, McNemar's test and the difference in the competition metric, per-class
precision/recall/F1 and confusion matrices side by side, the images they classify differently
(aigc.comparison, the same evidence promote decides on) -> log all of it in a compare run in A's
experiment, linked to the runs it compares. Every refusal comes before that run starts.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import pandas as pd

from aigc import comparison, tracking
from aigc.config import load
from aigc.data.cache import Limits
from aigc.errors import UserError, first_rows
from aigc.evaluation import METRICS
from aigc.pages import table_html
from aigc.scores import SCORE_FIT, SCORE_ON, Source, source_of

PROBABILITIES = "evaluation/val_probabilities.csv"  # a train/ensemble run's validation, a cv run's out-of-fold


@dataclass(frozen=True)
class Side:
    """One compared run: its letter, the run, where its held-out predictions are from, and the table."""
    letter: str
    run: object  # mlflow Run
    source: Source
    table: pd.DataFrame

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def who(self) -> str:
        """'train run 1a2b... (gic-resnet20)'"""
        return f"{self.run.data.tags.get('aigc.kind', 'a')} run {self.run_id} ({self.run.info.run_name})"


@dataclass(frozen=True)
class Pages:
    """What a compare run logs for one pair, under compare/<folder>/."""
    folder: str  # A_vs_B
    about: str  # which images: '40 images both have held-out predictions for: ...'
    per_class: pd.DataFrame
    confusion: object  # matplotlib Figure: both confusion matrices side by side
    per_class_html: str
    disagreements_html: str


def compare(run_ids: list[str], data_dir: str | None = None) -> dict:
    """Log a compare run of `run_ids` (the first is the reference); `data_dir`: thumbnails and class names."""
    config = load(None)  # no experiment config: the store's settings, table and image limits at their defaults
    tracking.connect(config.tracking, read_only=True)  # the compare run goes to the reference's experiment
    reference, *others = sides = _sides(run_ids)
    metric = reference.run.data.tags.get("aigc.metric")
    metric = metric if metric in METRICS else "accuracy"
    pairs = [_pair(reference, other, metric) for other in others]
    classes = len(comparison.probability_columns(reference.table))
    pictures = comparison.pictures(data_dir, num_classes=classes)
    class_names = pictures[0] if pictures else tuple(str(c) for c in range(classes))
    limits = Limits(config.data.max_image_bytes, config.data.max_image_pixels)
    # every page is made before the run starts: a broken --data folder leaves nothing behind
    pages = [_pages(evidence, sides, class_names, pictures, limits) for evidence in pairs]
    tracking.use_experiment_of(reference.run_id)
    with tracking.run("compare", _run_name(run_ids)) as active:
        tracking.set_tags({"aigc.compared_runs": " ".join(run_ids),
                           **{f"aigc.compare.{side.letter}": side.run_id for side in sides}})
        tracking.describe_run(_description(sides, pairs, pages))
        tracking.log_params({"reference_run": reference.run_id, "compared_runs": " ".join(run_ids), "metric": metric,
                             **({"data_dir": data_dir} if data_dir else {})})
        for evidence, page in zip(pairs, pages):
            one, two, folder = *evidence.names, page.folder
            tracking.log_metrics({f"{folder}/shared_images": evidence.images,
                                  f"{folder}/{metric}_{one}": evidence.scores[0],
                                  f"{folder}/{metric}_{two}": evidence.scores[1],
                                  f"{folder}/difference": evidence.difference,
                                  f"{folder}/mcnemar_p_value": evidence.p_value})
            tracking.log_figure(page.confusion, f"compare/{folder}/confusion.png")
            tracking.log_table(page.per_class, f"compare/{folder}/per_class.csv")
            tracking.log_text(page.per_class_html, f"compare/{folder}/per_class.html")
            tracking.log_table(evidence.table, f"compare/{folder}/mcnemar.csv")
            tracking.log_table(evidence.differ, f"compare/{folder}/disagreements.csv")
            tracking.log_text(page.disagreements_html, f"compare/{folder}/disagreements.html")
    return {"run_id": active.info.run_id, "metric": metric, "sides": sides, "pairs": pairs}


def _sides(run_ids: list[str]) -> list[Side]:
    """The runs, lettered A, B, ... in the order given, each with its held-out probability table."""
    if len(run_ids) < 2:
        raise UserError(f"compare needs at least two run ids (got {len(run_ids)}): aigc compare RUN_A RUN_B [...]")
    if len(run_ids) > len(string.ascii_uppercase):
        raise UserError(f"compare takes at most {len(string.ascii_uppercase)} runs (A to Z), got {len(run_ids)}")
    repeated = sorted({i for i in run_ids if run_ids.count(i) > 1})
    if repeated:
        raise UserError(f"run {first_rows(repeated)} is named more than once; compare different runs")
    sides = []
    for letter, run_id in zip(string.ascii_uppercase, run_ids):
        run = tracking.get_run(run_id)
        kind = run.data.tags.get("aigc.kind", "unknown")
        if PROBABILITIES not in tracking.artifact_files(run_id, "evaluation"):
            raise UserError(f"run {run_id} (a {kind} run) has no held-out probabilities ({PROBABILITIES}); compare "
                            "finished train, cv or ensemble runs")
        source = source_of(run.data.tags)
        if source is None:
            raise UserError(f"run {run_id}'s held-out probabilities do not say which images they are on (tags "
                            f"{SCORE_ON}, {SCORE_FIT}): made by an older aigc, they may be in-sample, and compare "
                            "reads held-out predictions only; run it again")
        table = tracking.load_probabilities(run_id)
        if not {"id", "label"} <= set(table.columns) or not comparison.probability_columns(table):
            raise UserError(f"run {run_id}'s {PROBABILITIES} has no id, label and p_* columns; it is not the table "
                            "aigc logged")
        sides.append(Side(letter, run, source, table))
    classes = {side.letter: len(comparison.probability_columns(side.table)) for side in sides}
    if len(set(classes.values())) > 1:
        raise UserError("the runs predict different numbers of classes ("
                        + ", ".join(f"run {side.run_id}: {classes[side.letter]}" for side in sides)
                        + "); compare runs of the same competition")
    return sides


def _pair(reference: Side, other: Side, metric: str) -> comparison.Evidence:
    """The reference and one other run on the images both have held-out predictions for."""
    who = f"runs {reference.run_id} ({reference.letter}) and {other.run_id} ({other.letter})"
    shared = comparison.shared_rows(reference.table, other.table, who)
    if shared is None:
        raise UserError(f"{who} share no images: {reference.letter} has held-out predictions for "
                        f"{reference.source.phrase(len(reference.table))}, {other.letter} for "
                        f"{other.source.phrase(len(other.table))}; compare runs scored on the same images (a cv "
                        "run's pool holds the validation split unless cv.pool_validation is false)")
    return comparison.evidence(*shared, metric, (reference.letter, other.letter), (reference.run_id, other.run_id))


def _pages(evidence: comparison.Evidence, sides: list[Side], class_names, pictures, limits: Limits) -> Pages:
    """The pages of one pair, each headed by the images it is on."""
    one, two = evidence.names
    first, second = (next(side for side in sides if side.letter == name) for name in evidence.names)
    about = comparison.on_images(evidence.images, {f"run {one}": (first.source, len(first.table)),
                                                   f"run {two}": (second.source, len(second.table))})
    table, figure = comparison.side_by_side(evidence, class_names, (f"{one}: {first.who()}", f"{two}: {second.who()}"))
    per_class_html = table_html(
        f"Per-class precision, recall and F1: run {one} vs run {two}", table,
        f"{one}: {first.who()}; {two}: {second.who()}. {about}. Every number here is on these images; differences "
        f"are {two} - {one}. {_scores(evidence)}.",
        signed=[c for c in table.columns if c.endswith("_difference")])
    disagreements_html = comparison.gallery(
        evidence, pictures, limits, title=f"Run {one} vs run {two}: where they differ",
        about=f"Run {one}, {first.who()}, vs run {two}, {second.who()}, on the {about}",
        called=(f"run {one}", f"run {two}"), command="compare")
    return Pages(f"{one}_vs_{two}", about, table, figure, per_class_html, disagreements_html)


def _scores(evidence: comparison.Evidence) -> str:
    """'accuracy A 0.5000, B 1.0000, difference +0.5000, McNemar p-value 1.8e-06'"""
    one, two = evidence.names
    return (f"{evidence.metric} {one} {evidence.scores[0]:.4f}, {two} {evidence.scores[1]:.4f}, difference "
            f"{evidence.difference:+.4f}, McNemar p-value {evidence.p_value:.4g}")


def _description(sides: list[Side], pairs: list[comparison.Evidence], pages: list[Pages]) -> str:
    """The compare run's overview: which runs, which images, the scores and where the pages are."""
    runs = "; ".join(f"{side.letter}: {side.who()}" for side in sides)
    against = " Every run is compared with A, the reference, on the images it shares with A." if len(pairs) > 1 else ""
    found = " ".join(f"{e.names[0]} vs {e.names[1]} on {page.about}: {_scores(e)}." for e, page in zip(pairs, pages))
    return (f"aigc compare. {runs}.{against} {found} Pages: compare/<pair>/per_class.html, confusion.png, "
            "disagreements.html.")


def _run_name(run_ids: list[str]) -> str:
    more = f"-and-{len(run_ids) - 2}-more" if len(run_ids) > 2 else ""
    return f"compare-{run_ids[0][:8]}-vs-{run_ids[1][:8]}{more}"


def summary(result: dict) -> str:
    """One line: the compare run and, per pair, the metric of each run on the images it shares with A."""
    sides = {side.letter: side for side in result["sides"]}
    pairs = "; ".join(f"{e.names[1]} ({sides[e.names[1]].who()}) {e.scores[1]:.4f} vs A {e.scores[0]:.4f} on "
                      f"{e.images:,} images (difference {e.difference:+.4f}, McNemar p-value {e.p_value:.4g})"
                      for e in result["pairs"])
    return (f"compare run {result['run_id']}: {result['metric']} on the images each run shares with A "
            f"({sides['A'].who()}): {pairs}; pages under compare/")
