"""`aigc runs`: the experiment's train/ensemble runs ranked by the competition metric."""

from __future__ import annotations

from aigc import registry, tracking
from aigc.config import Config

COLUMNS = ("rank", "run", "name", "family", "score", "accuracy", "f1_macro", "epochs", "lr", "batch", "size", "registry")


def leaderboard(config: Config, limit: int = 20) -> tuple[str, list[dict]]:
    """(metric, rows best first) for the config's experiment and registered model."""
    tracking.connect(config.tracking)
    experiment = tracking.experiment_id(config.tracking.experiment)
    ranking = tracking.rank_runs(config.tracking.metric, experiment_ids=[experiment]) if experiment else None
    metric, found = (ranking.metric, ranking.runs) if ranking else (config.tracking.metric, [])
    aliases = registry.aliases_by_run(config.tracking.registered_model)
    rows = []
    for rank, run in enumerate(found[:limit], start=1):
        params, metrics = run.data.params, run.data.metrics
        rows.append({
            "rank": rank, "run": run.info.run_id[:8], "name": run.info.run_name,
            "family": run.data.tags.get("aigc.model_family", run.data.tags.get("aigc.kind")),
            "score": metrics.get(f"final_{metric}"), "accuracy": metrics.get("final_accuracy"),
            "f1_macro": metrics.get("final_f1_macro"),
            "epochs": len(tracking.metric_history(run.info.run_id, "val_loss")) or None,
            "lr": params.get("train.learning_rate"), "batch": params.get("data.batch_size"),
            "size": params.get("data.image_size"), "registry": aliases.get(run.info.run_id, ""),
        })
    return metric, rows


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
