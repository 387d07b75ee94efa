"""What a run's final score is: the rows it was measured on, what was fitted on them, its interval.

Every run that logs `final_*` scores tags them with where they come from (DESIGN.md, "Where each
number comes from"), so a ranking, a promotion and every page can say which data a number is on:

| tag `aigc.score_on` | the rows                                                            |
|---------------------|---------------------------------------------------------------------|
| `validation`        | the competition's validation split                                  |
| `out-of-fold`       | each pooled image, predicted by the fold model that never saw it    |

| tag `aigc.score_fit`  | what was fitted or chosen on those rows                           |
|-----------------------|-------------------------------------------------------------------|
| `none`                | nothing: they are held out                                         |
| `cross-fitted`        | ensemble weights, TTA set or temperature, each row scored by parameters fitted without it |
| `chosen`              | the epoch was chosen on them (train.select_on: validation): slightly optimistic |

A run without these tags was made by an older aigc and may be in-sample: it is never ranked or
promoted. No MLflow here.
"""

from __future__ import annotations

from dataclasses import dataclass

SCORE_ON, SCORE_FIT = "aigc.score_on", "aigc.score_fit"
VALIDATION, OUT_OF_FOLD = "validation", "out-of-fold"
NONE, CROSS_FITTED, CHOSEN = "none", "cross-fitted", "chosen"
IMAGES = "final_images"  # metric: how many images every final score is measured on


@dataclass(frozen=True)
class Source:
    rows: str  # VALIDATION or OUT_OF_FOLD
    fit: str  # NONE, CROSS_FITTED or CHOSEN

    def tags(self) -> dict[str, str]:
        return {SCORE_ON: self.rows, SCORE_FIT: self.fit}

    def phrase(self, images: int | None = None) -> str:
        """'out-of-fold predictions of 244 pooled images (...)', for descriptions and pages."""
        if self.rows == VALIDATION:
            what = f"the validation split ({images:,} images)" if images else "the validation split"
        else:
            what = f"out-of-fold predictions of {images:,} pooled images" if images else "out-of-fold predictions"
        return what + FIT_NOTES[self.fit]


FIT_NOTES = {NONE: "", CROSS_FITTED: " (cross-fitted: each image scored by what was fitted without it)",
             CHOSEN: " (the epoch was chosen on them: slightly optimistic)"}


def source_of(tags: dict) -> Source | None:
    """A run's score source from its tags; None when an older aigc made it (unknown, maybe in-sample)."""
    rows, fit = tags.get(SCORE_ON), tags.get(SCORE_FIT)
    if rows in (VALIDATION, OUT_OF_FOLD) and fit in (NONE, CROSS_FITTED, CHOSEN):
        return Source(rows, fit)
    return None


def with_interval(metrics: dict, metric: str, prefix: str = "final_") -> str:
    """'0.8856 (95 % CI 0.8670-0.9030)' from a run's `final_<metric>` and its `_low`/`_high`
    (`prefix` "": an evaluation's own metrics and intervals, merged)."""
    value = metrics.get(f"{prefix}{metric}")
    if value is None:
        return "-"
    low, high = metrics.get(f"{prefix}{metric}_low"), metrics.get(f"{prefix}{metric}_high")
    return f"{value:.4f}" + (f" (95 % CI {low:.4f}-{high:.4f})" if low is not None and high is not None else "")


def within_noise(metrics: dict, leader: dict, metric: str) -> bool:
    """True when the leader's score lies inside this run's 95 % interval: on these images, the two
    cannot be told apart (a paired test on shared images, as promote runs, is sharper)."""
    low, high = metrics.get(f"final_{metric}_low"), metrics.get(f"final_{metric}_high")
    best = leader.get(f"final_{metric}")
    return None not in (low, high, best) and low <= best <= high
