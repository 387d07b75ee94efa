"""`aigc runs`: the experiment's train, ensemble and cv runs ranked by the competition metric.

Runs are ranked only against runs scored on the same images (aigc.scores): one table per set of
images (the validation split, or a cv pool's out-of-fold predictions), headed by what it is. Each
score carries its 95 % interval, and a run whose interval holds the table leader's score is marked
"within noise": on those images the two cannot be told apart. Runs an older aigc made, with no
record of which images their score is on, come last, unranked against the others. Beside the
score: `public` (the latest Kaggle public score `aigc submit` recorded on the run).
"""

from __future__ import annotations

from dataclasses import dataclass

from aigc import registry, scores, tracking
from aigc.config import Config
from aigc.errors import UserError, first_rows

COLUMNS = ("rank", "run", "name", "family", "score", "interval", "vs_leader", "public", "accuracy", "f1_macro",
           "log_loss", "epochs", "lr", "batch", "size", "registry")


@dataclass(frozen=True)
class Table:
    title: str  # which images these runs were scored on
    rows: list[dict]


def leaderboard(config: Config, limit: int = 20) -> tuple[str, list[Table]]:
    """(metric, one table per set of images the runs were scored on, each best first) for the config's
    experiment and registered model."""
    tracking.connect(config.tracking, read_only=True)  # a mistyped name must not create an experiment
    experiment = tracking.experiment_id(config.tracking.experiment)
    if experiment is None:
        raise UserError(f"no experiment {config.tracking.experiment!r} in {tracking.display_uri()} (it has: "
                        f"{first_rows(tracking.experiment_names()) or 'none'}); set tracking.experiment to one of them")
    ranking = tracking.rank_runs(config.tracking.metric, experiment_ids=[experiment])
    metric, found = ranking.metric, ranking.runs
    aliases = registry.aliases_by_run(config.tracking.registered_model)
    groups: dict[tuple, list] = {}
    for run in found:
        source = scores.source_of(run.data.tags)
        key = (source.rows, run.data.tags.get("aigc.val_digest", "")) if source else ("unknown", "")
        groups.setdefault(key, []).append(run)
    tables = [Table(_title(key, runs), [_row(rank, run, runs[0], metric, aliases, known=key[0] != "unknown")
                                        for rank, run in enumerate(runs[:limit], start=1)])
              for key, runs in sorted(groups.items(), key=lambda item: item[0][0] == "unknown")]
    return metric, tables


def _title(key: tuple, runs: list) -> str:
    rows, digest = key
    if rows == "unknown":
        return "scored on images aigc has no record of (runs of an older aigc: maybe in-sample, never ranked above)"
    images = runs[0].data.metrics.get(scores.IMAGES)
    return (f"scored on {scores.Source(rows, scores.NONE).phrase(int(images) if images else None)}"
            f" (digest {digest[:8]})")


def _row(rank: int, run, leader, metric: str, aliases: dict, known: bool) -> dict:
    params, metrics = run.data.params, run.data.metrics
    low, high = metrics.get(f"final_{metric}_low"), metrics.get(f"final_{metric}_high")
    versus = "leader" if run is leader else ("within-noise" if scores.within_noise(metrics, leader.data.metrics, metric)
                                             else "behind")
    source = scores.source_of(run.data.tags)
    return {
        "rank": rank if known else None, "run": run.info.run_id[:8], "name": run.info.run_name,
        "family": run.data.tags.get("aigc.model_family", run.data.tags.get("aigc.kind")),
        "score": metrics.get(f"final_{metric}"), "interval": f"{low:.4f}-{high:.4f}" if None not in (low, high) else None,
        "vs_leader": versus + (",optimistic" if source and source.fit == scores.CHOSEN else "") if known else None,
        "public": metrics.get(PUBLIC_SCORE), "accuracy": metrics.get("final_accuracy"),
        "f1_macro": metrics.get("final_f1_macro"), "log_loss": metrics.get("final_log_loss"),
        "epochs": len(tracking.logged_epochs(run.info.run_id)) or None,
        "lr": params.get("train.learning_rate"), "batch": params.get("data.batch_size"),
        "size": params.get("data.image_size"), "registry": aliases.get(run.info.run_id, ""),
    }


PUBLIC_SCORE = "public_score"  # metric aigc submit logs on the predict run and on the run that made the model


def local_scores(run, metric: str) -> dict:
    """{"validation": ..., "cv": ...}: a run's `final_<metric>` is its out-of-fold score when it was scored on
    out-of-fold predictions (a cv run, an ensemble of cv runs), else its score on the validation split."""
    score = run.data.metrics.get(f"final_{metric}")
    source = scores.source_of(run.data.tags)
    is_cv = source.rows == scores.OUT_OF_FOLD if source else run.data.tags.get("aigc.kind") == "cv"
    return {"validation": None if is_cv else score, "cv": score if is_cv else None}


def format_table(metric: str, tables: list[Table]) -> str:
    if not tables:
        return "no finished train, cv or ensemble runs yet"
    header = [{"score": metric, "interval": "95%_interval"}.get(c, c) for c in COLUMNS]
    blocks = []
    for table in tables:
        cells = [[_cell(row[c]) for c in COLUMNS] for row in table.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
        lines = [f"{metric}, {table.title}:", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
