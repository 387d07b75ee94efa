"""The `promote` step: register the best finished run; champion moves only if it is really better.

Candidates are FINISHED train/ensemble/cv runs of the experiment that logged a model for this
registered model name and whose final score is held out (aigc.scores: validation or out-of-fold,
anything fitted on those images cross-fitted); the best is picked among those scored on the
champion's images (digest). The decision compares champion and challenger on the images both have
held-out predictions for, with McNemar's exact test: under tracking.promote_rule `significant` the
challenger must be better by more than tracking.min_improvement AND p < tracking.promote_alpha;
under `better`, only the first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aigc import comparison, registry, tracking
from aigc.comparison import Evidence
from aigc.config import Config
from aigc.data.cache import Limits
from aigc.errors import UserError
from aigc.scores import IMAGES, SCORE_FIT, SCORE_ON, source_of, with_interval


@dataclass(frozen=True)
class Report:
    model: str
    metric: str
    challenger: str  # version
    challenger_score: float  # its final score, on all the images it was scored on
    champion: str | None  # the champion before this promote
    champion_score: float | None
    difference: float | None  # challenger - champion, on the images both were scored on
    p_value: float | None  # McNemar's exact test on those images
    promoted: bool
    reason: str
    rule: str = "significant"
    shared_images: int | None = None
    scores_on: str = ""  # what the challenger's and champion's scores were measured on
    champion_on: str = ""

    def text(self) -> str:
        lines = [f"model {self.model}, metric {self.metric}, rule {self.rule}",
                 f"challenger: version {self.challenger}, {self.metric} {self.challenger_score:.4f} {self.scores_on}"]
        if self.champion is not None:
            lines.append(f"champion:   version {self.champion}, {self.metric} {self.champion_score:.4f} "
                         f"{self.champion_on}")
        if self.difference is not None:
            lines.append(f"on the {self.shared_images} images both have held-out predictions for: difference "
                         f"{self.difference:+.4f}, McNemar p-value {self.p_value:.4g}")
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
        tracking.log_params({"registered_model": name, "min_improvement": config.tracking.min_improvement,
                             "promote_rule": config.tracking.promote_rule, "promote_alpha": config.tracking.promote_alpha})
        if rollback:
            moved = registry.rollback(name)
            tracking.set_tags({"aigc.decision": f"rollback {moved[0]} -> {moved[1]}"})
            return moved
        challenger = registry.get_version(name, version) if version else _register_best(config, name, run_id)
        registry.set_challenger(name, challenger.version)
        tracking.link_model(registry.model_id(challenger))  # the run page lists the version it judged
        report, evidence = _compare(name, challenger, config, forced=bool(version))
        if report.promoted:
            registry.set_champion(name, challenger.version)
        registry.describe_version(name, challenger.version, _version_description(challenger, report))
        tracking.describe_run(report.text().replace("\n", "; "))
        tracking.log_metrics({k: v for k, v in (("challenger_score", report.challenger_score),
                                                 ("champion_score", report.champion_score),
                                                 ("difference", report.difference),
                                                 ("mcnemar_p_value", report.p_value),
                                                 ("shared_images", report.shared_images)) if v is not None})
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
    """(run, metric, validation digest) of the best candidate (or of `run_id`) on the champion's images."""
    champion = registry.alias_version(name, registry.CHAMPION)
    # a named run is the user's choice; otherwise only runs trained for this registered model
    ranking = tracking.rank_runs(config.tracking.metric, run_id=run_id, registered_model=None if run_id else name,
                                 with_model=True)
    if not ranking.runs:
        raise UserError(f"no finished train, cv or ensemble run with a model for {name} in this experiment; "
                        "train one first (mlflow run . -e train ...)")
    held_out = [r for r in ranking.runs if source_of(r.data.tags) is not None]
    if not held_out:
        what = f"run {run_id}'s" if run_id else "no candidate's"
        raise UserError(f"{what} final score says which images it was measured on (tags {SCORE_ON}, "
                        f"{SCORE_FIT}): made by an older aigc, it may be in-sample, and promote compares held-out "
                        "scores only; run it again (or promote it by hand with --version N once registered)")
    if run_id:  # compared with the champion on the images both were scored on, whatever its digest
        best = held_out[0]
        digest = best.data.tags.get("aigc.val_digest", "")
    else:
        digest = champion.tags.get("aigc.val_digest") if champion else held_out[0].data.tags["aigc.val_digest"]
        same = [r for r in held_out if r.data.tags.get("aigc.val_digest") == digest]
        if not same:
            raise UserError(f"no candidate was scored on the champion's images (digest {digest[:12]}); name one with "
                            f"--run RUN_ID (compared on the images both were scored on) or promote one by hand with "
                            f"--version N; {registry.describe(name)}")
        best = same[0]
    metric = ranking.metric
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
                         SCORE_ON: tags[SCORE_ON], SCORE_FIT: tags[SCORE_FIT],
                         "aigc.val_digest": digest, "aigc.dataset_digest": tags.get("aigc.dataset_digest", ""),
                         "aigc.config": tags.get("aigc.config", ""), "aigc.run_id": best.info.run_id,
                         "aigc.model_family": tags.get("aigc.model_family", ""), "aigc.kind": tags["aigc.kind"]})
    return registry.register(name, tags["aigc.model_uri"], version_tags)


def _version_description(version, report: Report) -> str:
    """What the version is, its score and on which images, and what this promote decided about it."""
    tags = version.tags
    what = (f"{tags.get('aigc.kind', 'model')} run {tags.get('aigc.run_id', version.run_id)} "
            f"(config {tags.get('aigc.config') or '?'}, {tags.get('aigc.model_family') or '?'})")
    decision = "Champion" if report.promoted else "Challenger, not promoted"
    return f"{what}; {report.metric} {report.challenger_score:.4f} {report.scores_on}. {decision}: {report.reason}."


def _scored_on(version) -> str:
    """'(95 % CI 0.87-0.90) on the validation split (1,250 images)': a version's score and where it comes from."""
    tags = version.tags
    source = source_of(tags)
    metric = tags.get("aigc.metric", "accuracy")
    metrics = {key.removeprefix("metric."): float(value) for key, value in tags.items() if key.startswith("metric.")}
    images = int(metrics[IMAGES]) if IMAGES in metrics else None
    interval = with_interval(metrics, metric).partition(" ")[2]
    where = f"on {source.phrase(images)}" if source else "on images aigc has no record of (an older version)"
    return f"{interval} {where}".strip()


def _compare(name, challenger, config: Config, forced: bool) -> tuple[Report, Evidence | None]:
    """The decision, and the image-by-image evidence on the images champion and challenger were both scored on."""
    settings = config.tracking
    metric = challenger.tags.get("aigc.metric", "accuracy")
    score = float(challenger.tags.get("aigc.score", "nan"))
    champion = registry.alias_version(name, registry.CHAMPION)
    base = dict(model=name, metric=metric, challenger=str(challenger.version), challenger_score=score,
                rule=settings.promote_rule, scores_on=_scored_on(challenger))
    if champion is None:
        return Report(**base, champion=None, champion_score=None, difference=None, p_value=None,
                      promoted=True, reason="there was no champion yet"), None
    champion_score = float(champion.tags.get("aigc.score", "nan"))
    known = dict(champion=str(champion.version), champion_score=champion_score, champion_on=_scored_on(champion))
    if str(champion.version) == str(challenger.version):
        return Report(**base, **known, difference=None, p_value=None, promoted=False,
                      reason="the challenger is already the champion"), None
    evidence = _evidence(champion, challenger, metric, config)
    if evidence is None:
        reason = ("promoted by hand (--version)" if forced else
                  "the two were scored on no images in common; promote by hand with --version")
        return Report(**base, **known, difference=None, p_value=None, promoted=forced, reason=reason), None
    compared = dict(**known, difference=evidence.difference, p_value=evidence.p_value,
                    shared_images=evidence.images)
    if forced:
        return Report(**base, **compared, promoted=True, reason="promoted by hand (--version)"), evidence
    difference, p_value, margin, alpha = evidence.difference, evidence.p_value, settings.min_improvement, \
        settings.promote_alpha
    if difference <= margin:
        return Report(**base, **compared, promoted=False,
                      reason=f"not better: {difference:+.4f} <= minimum improvement {margin}"), evidence
    if settings.promote_rule == "significant" and p_value >= alpha:
        return Report(**base, **compared, promoted=False,
                      reason=f"better by {difference:+.4f}, but not significantly: McNemar p-value {p_value:.4g} >= "
                             f"{alpha} on {evidence.images} images (rule significant; tracking.promote_rule=better "
                             "promotes on the difference alone)"), evidence
    why = f" and significant: McNemar p-value {p_value:.4g} < {alpha}" if settings.promote_rule == "significant" else ""
    return Report(**base, **compared, promoted=True,
                  reason=f"better by {difference:+.4f} (> minimum improvement {margin}){why}"), evidence


NAMES = ("champion", "challenger")  # what the evidence tables and pages call the two versions' runs


def _evidence(champion, challenger, metric: str, config: Config) -> Evidence | None:
    """The two versions' logged held-out predictions compared image by image on the ids they share (a cv run's
    out-of-fold rows include the validation split a train run was scored on); None when they share none."""
    runs = champion.tags["aigc.run_id"], challenger.tags["aigc.run_id"]
    a, b = (tracking.load_probabilities(run) for run in runs)
    shared = comparison.shared_rows(a, b, "champion and challenger")
    return None if shared is None else comparison.evidence(*shared, metric, NAMES, runs)


def _pictures(data_dir: str | None, config: Config) -> tuple[tuple[str, ...], dict] | None:
    """(class names, image id -> file) of the --data folder, for the gallery; None without --data."""
    return comparison.pictures(data_dir, config.data.layout, config.data.num_classes, config.data.val_fraction)


def _log_evidence(evidence: Evidence, pictures, config: Config) -> None:
    """promotion/mcnemar.csv, promotion/disagreements.csv and .html (thumbnails with --data)."""
    tracking.log_table(evidence.table, "promotion/mcnemar.csv")
    tracking.log_table(evidence.differ, "promotion/disagreements.csv")
    tracking.log_text(_gallery(evidence, pictures, config), "promotion/disagreements.html")


def _gallery(evidence: Evidence, pictures, config: Config) -> str:
    """The images the two models classify differently, most confidently wrong first, in one HTML page."""
    champion, challenger = evidence.runs
    return comparison.gallery(
        evidence, pictures, Limits(config.data.max_image_bytes, config.data.max_image_pixels),
        title="Champion vs challenger: where they differ", called=("the champion", "the challenger"),
        about=f"Champion run {champion} vs challenger run {challenger} on the {evidence.images} images both have "
              "held-out predictions for", command="promote")
