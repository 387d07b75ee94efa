"""`aigc runs`: the experiment's train/ensemble runs ranked by the competition metric.

Beside the validation score: `cv` (the run's cross-validation score, see `cv_score`) and
`public` (the latest Kaggle public score `aigc submit` recorded on the run).
"""

from __future__ import annotations

from aigc import registry, tracking
from aigc.config import Config

COLUMNS = ("rank", "run", "name", "family", "score", "cv", "public", "accuracy", "f1_macro", "epochs", "lr", "batch",
           "size", "registry")


def leaderboard(config: Config, limit: int = 20) -> tuple[str, list[dict]]:
    """(metric, rows best first) for the config's experiment and registered model."""
    tracking.connect(config.tracking)
    experiment = tracking.experiment_id(config.tracking.experiment)
    found = tracking.search_runs("attributes.status = 'FINISHED'", [experiment]) if experiment else []
    found = [r for r in found if r.data.tags.get("aigc.kind") in ("train", "ensemble")]
    metric = config.tracking.metric
    if metric == "auto":
        metric = found[0].data.tags.get("aigc.metric", "accuracy") if found else "accuracy"
    found.sort(key=lambda r: r.data.metrics.get(f"final_{metric}", -1), reverse=True)
    aliases = registry.aliases_by_run(config.tracking.registered_model)
    rows = []
    for rank, run in enumerate(found[:limit], start=1):
        params, metrics = run.data.params, run.data.metrics
        rows.append({
            "rank": rank, "run": run.info.run_id[:8], "name": run.info.run_name,
            "family": run.data.tags.get("aigc.model_family", run.data.tags.get("aigc.kind")),
            "score": metrics.get(f"final_{metric}"), "cv": cv_score(metrics, metric),
            "public": metrics.get(PUBLIC_SCORE), "accuracy": metrics.get("final_accuracy"),
            "f1_macro": metrics.get("final_f1_macro"),
            "epochs": len(tracking.metric_history(run.info.run_id, "val_loss")) or None,
            "lr": params.get("train.learning_rate"), "batch": params.get("data.batch_size"),
            "size": params.get("data.image_size"), "registry": aliases.get(run.info.run_id, ""),
        })
    return metric, rows


PUBLIC_SCORE = "public_score"  # metric aigc submit logs on the predict run and on the run that made the model
CV_PREFIXES = ("cv_", "oof_")  # a CV run's score: `cv_<metric>` (expected), or `oof_<metric>`


def cv_score(metrics: dict, metric: str) -> float | None:
    """A run's cross-validation score for `metric`, whichever of the CV names it was logged under."""
    return next((metrics[f"{prefix}{metric}"] for prefix in CV_PREFIXES if f"{prefix}{metric}" in metrics), None)


def format_table(metric: str, rows: list[dict]) -> str:
    if not rows:
        return "no finished train or ensemble runs yet"
    cells = [[_cell(row[c]) for c in COLUMNS] for row in rows]
    header = [c if c != "score" else metric for c in COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
