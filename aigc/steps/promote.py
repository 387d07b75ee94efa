"""The `promote` step: register the best finished run; champion moves only if it is really better.

Candidates are FINISHED train/ensemble runs of the experiment that logged a model
for this registered model name, compared only on the same validation set (digest).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from aigc import registry, tracking
from aigc.config import Config
from aigc.errors import UserError
from aigc.pages import gallery_html
from aigc.data.cache import Limits, decode
from aigc.data.layouts import open_dataset
from aigc.evaluation import disagreements, mcnemar_p_value


@dataclass(frozen=True)
class Report:
    model: str
    metric: str
    challenger: str  # version
    challenger_score: float
    champion: str | None  # the champion before this promote
    champion_score: float | None
    difference: float | None
    p_value: float | None
    promoted: bool
    reason: str

    def text(self) -> str:
        lines = [f"model {self.model}, metric {self.metric}",
                 f"challenger: version {self.challenger}, {self.metric} {self.challenger_score:.4f}"]
        if self.champion is not None:
            lines.append(f"champion:   version {self.champion}, {self.metric} {self.champion_score:.4f}")
        if self.difference is not None:
            lines.append(f"difference {self.difference:+.4f}, McNemar p-value {self.p_value:.4g}")
        lines.append(("PROMOTED: " if self.promoted else "KEPT champion: ") + self.reason)
        return "\n".join(lines)


def promote(config: Config, version: str | None = None, rollback: bool = False,
            run_id: str | None = None, data_dir: str | None = None) -> Report | tuple[str, str]:
    """Register the best candidate (or `run_id`, or take `version`), make it challenger, maybe champion.

    `version` is promoted by hand (forced); `run_id` must beat the champion like any candidate.
    `data_dir`: the dataset, for the thumbnails of the images champion and challenger disagree on.
    """
    tracking.connect(config.tracking)
    name = config.tracking.registered_model
    _refuse_early(config, name, version, rollback, run_id)  # a refused promote leaves no FAILED run behind
    pictures = _pictures(data_dir, config)  # a bad --data is refused now, not after the aliases moved
    with registry.promotion_lock(name), tracking.run("promote", f"promote-{name}"):
        tracking.log_params({"registered_model": name, "min_improvement": config.tracking.min_improvement})
        if rollback:
            moved = registry.rollback(name)
            tracking.set_tags({"aigc.decision": f"rollback {moved[0]} -> {moved[1]}"})
            return moved
        challenger = registry.get_version(name, version) if version else _register_best(config, name, run_id)
        registry.set_challenger(name, challenger.version)
        tracking.link_model(registry.model_id(challenger))  # the run page lists the version it judged
        report, evidence = _compare(name, challenger, config.tracking.min_improvement, forced=bool(version))
        if report.promoted:
            registry.set_champion(name, challenger.version)
        registry.describe_version(name, challenger.version, _version_description(challenger, report))
        tracking.describe_run(report.text().replace("\n", "; "))
        tracking.log_metrics({k: v for k, v in (("challenger_score", report.challenger_score),
                                                 ("champion_score", report.champion_score),
                                                 ("difference", report.difference),
                                                 ("mcnemar_p_value", report.p_value)) if v is not None})
        tracking.set_tags({"aigc.decision": "promoted" if report.promoted else "kept",
                           "aigc.challenger_version": challenger.version})
        if evidence is not None:
            _log_evidence(evidence, pictures, config)
        tracking.log_text(report.text(), "promotion_report.txt")
        tracking.log_dict(asdict(report), "promotion_report.json")
    return report


def _refuse_early(config: Config, name: str, version, rollback: bool, run_id) -> None:
    """The UserErrors a promote can meet, raised before its run is started."""
    if rollback:
        registry.check_rollback(name)
    elif version:
        registry.get_version(name, version)
    else:
        _best_candidate(config, name, run_id)


def _best_candidate(config: Config, name: str, run_id: str | None = None):
    """(run, metric, validation digest) of the best candidate (or of `run_id`) on the champion's validation set."""
    champion = registry.alias_version(name, registry.CHAMPION)
    # a named run is the user's choice; otherwise only runs trained for this registered model
    ranking = tracking.rank_runs(config.tracking.metric, run_id=run_id, registered_model=None if run_id else name,
                                 with_model=True)
    if not ranking.runs:
        raise UserError(f"no finished train or ensemble run with a model for {name} in this experiment; "
                        "train one first (mlflow run . -e train ...)")
    digest = champion.tags.get("aigc.val_digest") if champion else ranking.runs[0].data.tags["aigc.val_digest"]
    same = [r for r in ranking.runs if r.data.tags.get("aigc.val_digest") == digest]
    if not same:
        raise UserError(f"no candidate was evaluated on the champion's validation set (digest {digest[:12]}); "
                        f"promote one by hand with --version N; {registry.describe(name)}")
    best, metric = same[0], ranking.metric
    if f"final_{metric}" not in best.data.metrics:
        raise UserError(f"run {best.info.run_id} logged no final_{metric}; set tracking.metric to a metric it has")
    return best, metric, digest


def _register_best(config: Config, name: str, run_id: str | None = None):
    """The best candidate (or the run `run_id`) on the champion's validation set, registered once."""
    best, metric, digest = _best_candidate(config, name, run_id)
    existing = registry.version_for_run(name, best.info.run_id)
    if existing:
        return existing
    tags = best.data.tags
    version_tags = {f"metric.{k}": v for k, v in best.data.metrics.items() if k.startswith("final_")}
    version_tags.update({"aigc.metric": metric, "aigc.score": best.data.metrics[f"final_{metric}"],
                         "aigc.val_digest": digest, "aigc.dataset_digest": tags.get("aigc.dataset_digest", ""),
                         "aigc.config": tags.get("aigc.config", ""), "aigc.run_id": best.info.run_id,
                         "aigc.model_family": tags.get("aigc.model_family", ""), "aigc.kind": tags["aigc.kind"]})
    return registry.register(name, tags["aigc.model_uri"], version_tags)


def _version_description(version, report: Report) -> str:
    """What the version is, its score, and what this promote decided about it."""
    tags = version.tags
    what = (f"{tags.get('aigc.kind', 'model')} run {tags.get('aigc.run_id', version.run_id)} "
            f"(config {tags.get('aigc.config') or '?'}, {tags.get('aigc.model_family') or '?'})")
    decision = "Champion" if report.promoted else "Challenger, not promoted"
    return (f"{what}; validation {report.metric} {report.challenger_score:.4f} on its best epoch's weights. "
            f"{decision}: {report.reason}.")


def _compare(name, challenger, min_improvement: float, forced: bool) -> tuple[Report, Evidence | None]:
    """The decision, and the image-by-image evidence when champion and challenger share a validation set."""
    metric = challenger.tags.get("aigc.metric", "accuracy")
    score = float(challenger.tags.get("aigc.score", "nan"))
    champion = registry.alias_version(name, registry.CHAMPION)
    base = dict(model=name, metric=metric, challenger=str(challenger.version), challenger_score=score)
    if champion is None:
        return Report(**base, champion=None, champion_score=None, difference=None, p_value=None,
                      promoted=True, reason="there was no champion yet"), None
    champion_score = float(champion.tags.get("aigc.score", "nan"))
    if str(champion.version) == str(challenger.version):
        return Report(**base, champion=str(champion.version), champion_score=champion_score, difference=0.0,
                      p_value=1.0, promoted=False, reason="the challenger is already the champion"), None
    same_data = champion.tags.get("aigc.val_digest") == challenger.tags.get("aigc.val_digest")
    difference = score - champion_score
    evidence = _evidence(champion, challenger) if same_data else None
    compared = dict(champion=str(champion.version), champion_score=champion_score, difference=difference,
                    p_value=evidence and evidence.p_value)
    if forced:
        return Report(**base, **compared, promoted=True, reason="promoted by hand (--version)"), evidence
    if not same_data:
        return Report(**base, **compared, promoted=False,
                      reason="evaluated on a different validation set; promote by hand with --version"), None
    if difference > min_improvement:
        return Report(**base, **compared, promoted=True,
                      reason=f"better by {difference:+.4f} (> minimum improvement {min_improvement})"), evidence
    return Report(**base, **compared, promoted=False,
                  reason=f"not better: {difference:+.4f} <= minimum improvement {min_improvement}"), evidence


@dataclass(frozen=True)
class Evidence:
    """The champion and the challenger on the same validation images: what the promote run logs."""
    table: pd.DataFrame  # McNemar's 2x2 counts
    differ: pd.DataFrame  # evaluation.disagreements: the images they classify differently, most damning first
    champion_run: str
    challenger_run: str

    @property
    def p_value(self) -> float:
        counts = self.table.set_index("images")
        return mcnemar_p_value(counts.loc["champion right", "challenger wrong"],
                               counts.loc["champion wrong", "challenger right"])


def _evidence(champion, challenger) -> Evidence:
    """The two versions' logged validation predictions compared image by image, aligned by id."""
    runs = champion.tags["aigc.run_id"], challenger.tags["aigc.run_id"]
    table, differ = disagreements(*(tracking.load_probabilities(run) for run in runs))
    return Evidence(table, differ, *runs)


def _pictures(data_dir: str | None, config: Config) -> tuple[tuple[str, ...], dict] | None:
    """(class names, image id -> file) of the --data folder, for the gallery; None without --data."""
    if not data_dir:
        return None
    dataset = open_dataset(data_dir, config.data.layout, config.data.num_classes, config.data.val_fraction)
    return dataset.class_names, {i: path for split in dataset.splits.values() for i, path in zip(split.ids, split.paths)}


def _log_evidence(evidence: Evidence, pictures, config: Config) -> None:
    """promotion/mcnemar.csv, promotion/disagreements.csv and .html (thumbnails with --data)."""
    tracking.log_table(evidence.table, "promotion/mcnemar.csv")
    tracking.log_table(evidence.differ, "promotion/disagreements.csv")
    tracking.log_text(_gallery(evidence, pictures, config), "promotion/disagreements.html")


THUMBNAIL = 64
GALLERY_IMAGES = 60  # per section: the page stays small however many images the models disagree on
SECTIONS = (("champion", "the champion was wrong, the challenger right"),
            ("challenger", "the challenger was wrong, the champion right"), ("both", "both wrong, differently"))


def _gallery(evidence: Evidence, pictures, config: Config) -> str:
    """The images the two models classify differently, most confidently wrong first, in one HTML page."""
    differ = evidence.differ
    names, paths = pictures or (None, {})  # the thumbnails and class names; the decision never depends on them
    name = (lambda c: names[c] if names and c < len(names) else str(c))  # noqa: E731
    limits = Limits(config.data.max_image_bytes, config.data.max_image_pixels)
    blank = np.full((THUMBNAIL, THUMBNAIL, 3), 220, np.uint8)
    sections = []
    for loser, heading in SECTIONS:
        rows = differ[differ["loser"] == loser].head(GALLERY_IMAGES)
        items = []
        for row in rows.itertuples():
            pixels = decode(paths[row.id], THUMBNAIL, limits).pixels if row.id in paths else None
            items.append((blank if pixels is None else pixels,
                          f"{row.id}: true {name(row.label)}; champion {name(row.champion_class)} "
                          f"({row.champion_p:.2f}); challenger {name(row.challenger_class)} ({row.challenger_p:.2f})"))
        sections.append((f"{heading}, most confident first", items))
    counts = evidence.table.set_index("images")
    note = (f"Champion run {evidence.champion_run} vs challenger run {evidence.challenger_run} on the same "
            f"{int(counts.to_numpy().sum())} validation images: they disagree on {len(differ)}; McNemar p-value "
            f"{evidence.p_value:.4g}. At most {GALLERY_IMAGES} images per section"
            + ("." if pictures else "; pass --data DIR to promote to see the images and class names."))
    return gallery_html("Champion vs challenger: where they differ", sections, note)

