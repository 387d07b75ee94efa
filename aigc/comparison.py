"""Two runs compared on the images both have held-out predictions for: promote's evidence, `aigc compare`'s pages.

A train run's held-out predictions cover its validation split, a cv run's its whole pool out of fold (which
holds the validation split unless cv.pool_validation is false): two runs are compared image by image on the
ids both tables hold, and only there. What comes out: McNemar's exact test on their right/wrong pairs, the
difference in the competition metric, per-class scores and confusion matrices side by side, and the images
they classify differently. No MLflow here: plain tables, figures and HTML.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aigc.data.decode import Limits, decode
from aigc.data.layouts import open_dataset
from aigc.errors import UserError, first_rows
from aigc.evaluation import disagreements, evaluate, mcnemar_p_value, metric_function
from aigc.figures import confusions_figure
from aigc.oof import probability_columns
from aigc.pages import gallery_html
from aigc.scores import Source


def shared_rows(a: pd.DataFrame, b: pd.DataFrame, who: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Two runs' probability tables cut to the ids both have, in the same order; None when they share none.
    Ids whose labels differ are refused: the runs were not scored on the same truth (`who`, e.g. "champion
    and challenger", names the two in that message)."""
    a, b = (t.assign(id=t["id"].astype(str)).drop_duplicates("id").set_index("id", drop=False) for t in (a, b))
    common = a.index.intersection(b.index)
    if not len(common):
        return None
    a, b = a.loc[common], b.loc[common]
    differ = common[a["label"].to_numpy() != b["label"].to_numpy()]
    if len(differ):
        raise UserError(f"{who} were scored against different labels for {len(differ)} images "
                        f"({first_rows(differ)}); compare runs of the same competition data")
    return a.reset_index(drop=True), b.reset_index(drop=True)


@dataclass(frozen=True)
class Evidence:
    """Two runs on the images both were scored on, image by image."""
    names: tuple[str, str]  # what the tables and pages call the two: (champion, challenger), (A, B)
    runs: tuple[str, str]  # their run ids
    rows: tuple[pd.DataFrame, pd.DataFrame]  # their probability tables on the shared images, aligned by id
    table: pd.DataFrame  # McNemar's 2x2 counts
    differ: pd.DataFrame  # evaluation.disagreements: the images they classify differently, most damning first
    metric: str
    scores: tuple[float, float]  # the metric of each on these images

    @property
    def difference(self) -> float:
        """second - first, the metric on these images."""
        return self.scores[1] - self.scores[0]

    @property
    def images(self) -> int:
        return len(self.rows[0])

    @property
    def p_value(self) -> float:
        one, two = self.names
        counts = self.table.set_index("images")
        return mcnemar_p_value(counts.loc[f"{one} right", f"{two} wrong"], counts.loc[f"{one} wrong", f"{two} right"])


def evidence(a: pd.DataFrame, b: pd.DataFrame, metric: str, names: tuple[str, str],
             runs: tuple[str, str]) -> Evidence:
    """`a` and `b` (shared_rows' aligned tables of the runs `runs`) compared image by image."""
    score = metric_function(metric, len(probability_columns(a)))
    labels = a["label"].to_numpy()
    scores = tuple(score(labels, t[probability_columns(t)].to_numpy().argmax(1)) for t in (a, b))
    table, differ = disagreements(a, b, names)
    return Evidence(names, runs, (a, b), table, differ, metric, scores)


def on_images(count: int, sides: dict[str, tuple[Source, int]]) -> str:
    """'40 images both have held-out predictions for: the validation split (40 images)', in aigc.scores'
    words. `sides`: what each run is called ("run A") -> (its score source, its held-out images)."""
    phrases = {who: source.phrase(total) for who, (source, total) in sides.items()}
    head = f"{count:,} images both have held-out predictions for: "
    if len(set(phrases.values())) == 1:
        return head + next(iter(phrases.values()))
    (first, one), (second, two) = phrases.items()
    return head + f"those in both {first}'s scores on {one} and {second}'s on {two}"


def side_by_side(evidence: Evidence, class_names, titles: tuple[str, str]):
    """(per-class table, figure) of the two on the shared images: class, support, then precision, recall
    and F1 of each and their difference (second - first); their confusion matrices side by side."""
    one, two = evidence.names
    evaluations = [evaluate(t[probability_columns(t)].to_numpy(), t["label"].to_numpy(), class_names)
                   for t in evidence.rows]
    first, second = (e.per_class for e in evaluations)
    table = first[["class", "support"]].copy()
    for score in ("precision", "recall", "f1"):
        table[f"{score}_{one}"], table[f"{score}_{two}"] = first[score], second[score]
        table[f"{score}_difference"] = (second[score] - first[score]).round(4)  # of the values shown
    figure = confusions_figure(dict(zip(titles, (e.confusion for e in evaluations))), class_names,
                               f"Row-normalised confusion matrices on the {evidence.images:,} images both have "
                               "held-out predictions for")
    return table, figure


def pictures(data_dir: str | None, layout: str = "auto", num_classes: int = 0,
             val_fraction: float = 0.1) -> tuple[tuple[str, ...], dict] | None:
    """(class names, image id -> file) of a --data folder, for thumbnails and class names; None without one."""
    if not data_dir:
        return None
    dataset = open_dataset(data_dir, layout, num_classes, val_fraction)
    paths = {i: path for split in dataset.splits.values() for i, path in zip(split.ids, split.paths)}
    return dataset.class_names, paths


THUMBNAIL = 64
GALLERY_IMAGES = 60  # per section: the page stays small however many images the models disagree on


def gallery(evidence: Evidence, pictures, limits: Limits, *, title: str, about: str, called: tuple[str, str],
            command: str) -> str:
    """The images the two classify differently, most confidently wrong first, in one HTML page. `about`
    opens its note (who is compared on which images), `called` is how prose names the two ("the champion"),
    `command` the one whose --data shows the thumbnails."""
    differ = evidence.differ
    one, two = evidence.names
    first, second = called
    names, paths = pictures or (None, {})  # the thumbnails and class names; no number depends on them
    name = (lambda c: names[c] if names and c < len(names) else str(c))  # noqa: E731
    blank = np.full((THUMBNAIL, THUMBNAIL, 3), 220, np.uint8)
    sections = []
    for loser, heading in ((one, f"{first} was wrong, {second} right"), (two, f"{second} was wrong, {first} right"),
                           ("both", "both wrong, differently")):
        items = []
        for row in differ[differ["loser"] == loser].head(GALLERY_IMAGES).to_dict("records"):
            pixels = decode(paths[row["id"]], THUMBNAIL, limits).pixels if row["id"] in paths else None
            items.append((blank if pixels is None else pixels,
                          f"{row['id']}: true {name(row['label'])}; {one} {name(row[f'{one}_class'])} "
                          f"({row[f'{one}_p']:.2f}); {two} {name(row[f'{two}_class'])} ({row[f'{two}_p']:.2f})"))
        sections.append((f"{heading}, most confident first", items))
    note = (f"{about}: they disagree on {len(differ)}; McNemar p-value {evidence.p_value:.4g}. At most "
            f"{GALLERY_IMAGES} images per section"
            + ("." if pictures else f"; pass --data DIR to {command} to see the images and class names."))
    return gallery_html(title, sections, note)
