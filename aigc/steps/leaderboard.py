"""`aigc runs`: the experiment's train, ensemble and cv runs ranked by the competition metric.

Beside the validation score: `cv` (a cv run's out-of-fold score, see `local_scores`) and
`public` (the latest Kaggle public score `aigc submit` recorded on the run).
"""

from __future__ import annotations

from aigc import registry, tracking
from aigc.config import Config
from aigc.errors import UserError, first_rows

COLUMNS = ("rank", "run", "name", "family", "validation", "cv", "public", "accuracy", "f1_macro", "epochs", "lr", "batch",
           "size", "registry")


def leaderboard(config: Config, limit: int = 20) -> tuple[str, list[dict]]:
    """(metric, rows best first) for the config's experiment and registered model."""
    tracking.connect(config.tracking, read_only=True)  # a mistyped name must not create an experiment
    experiment = tracking.experiment_id(config.tracking.experiment)
    if experiment is None:
        raise UserError(f"no experiment {config.tracking.experiment!r} in {tracking.display_uri()} (it has: "
                        f"{first_rows(tracking.experiment_names()) or 'none'}); set tracking.experiment to one of them")
    ranking = tracking.rank_runs(config.tracking.metric, experiment_ids=[experiment])
    metric, found = ranking.metric, ranking.runs
    aliases = registry.aliases_by_run(config.tracking.registered_model)
    rows = []
    for rank, run in enumerate(found[:limit], start=1):
        params, metrics = run.data.params, run.data.metrics
        rows.append({
            "rank": rank, "run": run.info.run_id[:8], "name": run.info.run_name,
            "family": run.data.tags.get("aigc.model_family", run.data.tags.get("aigc.kind")),
            **local_scores(run, metric), "public": metrics.get(PUBLIC_SCORE), "accuracy": metrics.get("final_accuracy"),
            "f1_macro": metrics.get("final_f1_macro"),
            "epochs": len(tracking.logged_epochs(run.info.run_id)) or None,
            "lr": params.get("train.learning_rate"), "batch": params.get("data.batch_size"),
            "size": params.get("data.image_size"), "registry": aliases.get(run.info.run_id, ""),
        })
    return metric, rows


PUBLIC_SCORE = "public_score"  # metric aigc submit logs on the predict run and on the run that made the model


def local_scores(run, metric: str) -> dict:
    """{"validation": ..., "cv": ...}: a run's `final_<metric>` is its out-of-fold score when it is a cv
    run, else its score on the validation split; the other is None."""
    score = run.data.metrics.get(f"final_{metric}")
    is_cv = run.data.tags.get("aigc.kind") == "cv"
    return {"validation": None if is_cv else score, "cv": score if is_cv else None}


def format_table(metric: str, rows: list[dict]) -> str:
    if not rows:
        return "no finished train or ensemble runs yet"
    cells = [[_cell(row[c]) for c in COLUMNS] for row in rows]
    header = [{"validation": f"val_{metric}", "cv": f"cv_{metric}"}.get(c, c) for c in COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
