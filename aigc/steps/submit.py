"""The `submit` step: a predict run's submission -> Kaggle; the public score back onto the runs.

Where a score lands, so the UI answers "where did this leaderboard score come from":
- the predict run: metric `public_score`; tags aigc.kaggle.{competition,ref,date,message,status};
- the run whose model made the predictions (train, ensemble or CV run): metric `public_score`,
  so `aigc runs` and the UI's run table show it beside the validation and CV scores;
- the registered version the predict run used: tags aigc.public_score and aigc.kaggle.*;
- one run named `leaderboard` per experiment (aigc.kind leaderboard): cv_vs_public.png and
  submissions.csv, redrawn at every submit, so the current picture is always in one place.
The submission uploaded is the predict run's own artifact (what the run recorded), not whatever
the local file holds now; nothing local is written.
"""

from __future__ import annotations

import math
import tempfile
from datetime import datetime, timezone

import pandas as pd

from aigc import kaggle_client, registry, tracking
from aigc.config import Config
from aigc.errors import UserError
from aigc.steps.leaderboard import PUBLIC_SCORE, local_scores

LEADERBOARD_RUN = "leaderboard"
SOURCE_KINDS = ("train", "ensemble", "cv")  # runs that make a model predict can use
MAX_TAG = 5000  # MLflow's tag limit is 8000 characters: a message is cut well below it
PUBLIC_NOTE = "Kaggle public score:"  # the sentence submit keeps current at the end of a version's description


def submit(config: Config, competition: str, run_id: str = "", version: str = "", message: str = "",
           wait: float = 600.0) -> dict:
    """Submit a predict run's submission, wait up to `wait` s for the public score, record it everywhere."""
    tracking.connect(config.tracking)
    predict_run = find_predict_run(config, run_id, version)
    with tempfile.TemporaryDirectory(prefix="aigc-submit-") as folder:
        ref = kaggle_client.submit(_submission_file(predict_run, folder), competition, message)
    record = {"competition": competition, "ref": ref, "message": message[:MAX_TAG], "status": "PENDING",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _record(config, predict_run, record, None)  # the reference is kept even if waiting fails
    scored = kaggle_client.wait_for_score(competition, ref, wait)
    record.update(status=scored.status, date=scored.date or record["date"])
    _record(config, predict_run, record, scored.public_score)
    if scored.status == "ERROR":
        raise UserError(f"Kaggle could not score submission {ref} of predict run {predict_run.info.run_id}: "
                        f"{scored.error or 'no reason given'}; fix the file and submit again")
    return {"run_id": predict_run.info.run_id, "ref": ref, "status": scored.status, "score": scored.public_score}


def record_score(config: Config, score: float, run_id: str = "", version: str = "", message: str = "",
                 competition: str = "") -> dict:
    """Record a public score read off kaggle.com by hand (no network) as if `submit` had fetched it."""
    if not math.isfinite(score):
        raise UserError(f"--score {score} is not a number; give the public score kaggle.com shows, e.g. 0.912")
    tracking.connect(config.tracking)
    predict_run = find_predict_run(config, run_id, version)
    tags = predict_run.data.tags
    record = {"competition": competition or tags.get("aigc.kaggle.competition", ""),
              "ref": tags.get("aigc.kaggle.ref", "manual"),  # a submission still waiting gets its score
              "message": (message or tags.get("aigc.kaggle.message", ""))[:MAX_TAG], "status": "COMPLETE",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _record(config, predict_run, record, score)
    return {"run_id": predict_run.info.run_id, "ref": record["ref"], "status": "COMPLETE", "score": score}


def find_predict_run(config: Config, run_id: str = "", version: str = ""):
    """The predict run named by id, the newest one that used registered `version`, or the newest one."""
    if run_id and version:
        raise UserError("give --run or --version, not both")
    if run_id:
        run = tracking.get_run(run_id)
        kind = run.data.tags.get("aigc.kind")
        if kind != "predict":
            raise UserError(f"run {run_id} is a {kind or 'non-aigc'} run, not a predict run: pass the id of the "
                            "predict run that wrote the submission (aigc predict prints it)")
        return run
    name = config.tracking.registered_model
    if version:
        registry.get_version(name, version)  # an unknown version is refused with the versions that exist
    experiment = tracking.experiment_id(config.tracking.experiment)
    used = {"aigc.model_version": f"{name}/{version}"} if version else {}
    found = tracking.runs_of_kind(("predict",), [experiment], tags=used) if experiment else []
    if not found:
        used = f" used version {version} of {name}" if version else ""
        raise UserError(f"no finished predict run{used} in experiment {config.tracking.experiment}; "
                        f"run predict first (aigc predict --data DIR{f' --model {version}' if version else ''})")
    return found[0]


def _submission_file(predict_run, folder: str):
    run_id = predict_run.info.run_id
    files = tracking.artifact_files(run_id, "submission")
    if not files:
        raise UserError(f"predict run {run_id} logged no submission file (artifact folder submission/); "
                        "run predict again")
    return tracking.download_artifact(run_id, files[0], folder)


def _record(config: Config, predict_run, record: dict, score: float | None) -> None:
    """The submission's details (and its score, once known) on the predict run, its source run and version."""
    run_id = predict_run.info.run_id
    scored = {PUBLIC_SCORE: score} if score is not None else {}
    details = {f"aigc.kaggle.{key}": value for key, value in record.items()}
    tracking.record_on_run(run_id, scored, details)
    source, version = _source(predict_run)
    if source and scored:
        tracking.record_on_run(source, scored, {"aigc.kaggle.predict_run": run_id})
    if version:
        public = {"aigc.public_score": score} if score is not None else {}
        registry.set_version_tags(version.name, version.version,
                                  {**details, "aigc.kaggle.predict_run": run_id, **public})
        if score is not None:  # the version page shows its description first: the public score belongs there
            kept = (version.description or "").split(PUBLIC_NOTE)[0].rstrip()
            registry.describe_version(version.name, version.version,
                                      f"{kept} {PUBLIC_NOTE} {score} ({record['competition'] or 'Kaggle'}, "
                                      f"submission {record['ref']}, {record['date'][:10]}).".strip())
    if scored:
        _redraw_leaderboard(config)


def _source(predict_run):
    """(id of the run that made the model, registered version) for a predict run; None where unknown."""
    tags = predict_run.data.tags
    version = None
    if "/" in tags.get("aigc.model_version", ""):
        name, number = tags["aigc.model_version"].rsplit("/", 1)
        try:
            version = registry.get_version(name, number)
        except UserError:  # deleted since: the runs still get the score
            pass
    source = tags.get("aigc.source_run_id") or (version.run_id if version else "")
    uri = tags.get("aigc.model_uri", "")
    if not source and uri.startswith("runs:/"):
        source = uri.split("/")[1]
    elif not source and uri.startswith("models:/m-"):
        try:
            source = registry.logged_model_run(uri)
        except UserError:
            pass
    return source or None, version


def _redraw_leaderboard(config: Config) -> None:
    """cv_vs_public.png, submissions.csv and its description on the experiment's one `leaderboard` run."""
    experiment = tracking.experiment_id(config.tracking.experiment)
    scored = [r for r in tracking.runs_of_kind(SOURCE_KINDS, [experiment]) if PUBLIC_SCORE in r.data.metrics]
    if not scored:  # the score's model run is unknown (deleted): nothing to place on the figure
        return
    table = pd.DataFrame([_row(config, r) for r in scored])
    numbers = ["validation", "cv", "local_low", "local_high", "public"]
    table[numbers] = table[numbers].astype(float)
    table["gap"] = [_gap(row) for row in table.itertuples()]
    existing = tracking.runs_of_kind((LEADERBOARD_RUN,), [experiment], finished=False)
    with tracking.run(LEADERBOARD_RUN, LEADERBOARD_RUN, run_id=existing[0].info.run_id if existing else None):
        tracking.log_figure(cv_vs_public_figure(table), "cv_vs_public.png")
        tracking.log_table(table, "submissions.csv")
        tracking.describe_run(leaderboard_description(table))


def _row(config: Config, run) -> dict:
    metrics, tags = run.data.metrics, run.data.tags
    metric = config.tracking.metric if config.tracking.metric != "auto" else tags.get("aigc.metric", "accuracy")
    return {"run_id": run.info.run_id, "name": run.info.run_name, "kind": tags.get("aigc.kind"), "metric": metric,
            **local_scores(run, metric), "local_low": metrics.get(f"final_{metric}_low"),
            "local_high": metrics.get(f"final_{metric}_high"), "public": metrics[PUBLIC_SCORE]}


def _gap(row) -> str:
    """Where the public score falls against the local score's 95 % interval."""
    local = row.cv if pd.notna(row.cv) else row.validation
    if pd.isna(row.local_low) or pd.isna(row.local_high) or pd.isna(local):
        return "no local interval (a run of an older aigc)"
    if row.public < row.local_low:
        return f"local score optimistic by {100 * (local - row.public):.1f} points"
    if row.public > row.local_high:
        return f"local score pessimistic by {100 * (row.public - local):.1f} points"
    return "public score inside the local 95 % interval"


def leaderboard_description(table: pd.DataFrame) -> str:
    """The leaderboard run's overview: every scored model, its local and public score, and the gap."""
    lines = [f"{len(table)} model(s) with a Kaggle public score, local score (out-of-fold where the run has one, "
             "else validation) against public; a public score outside the local 95 % interval is flagged."]
    for row in table.itertuples():
        local = row.cv if pd.notna(row.cv) else row.validation
        interval = (f" (95 % CI {row.local_low:.4f}-{row.local_high:.4f})"
                    if pd.notna(row.local_low) and pd.notna(row.local_high) else "")
        lines.append(f"- {row.name} ({row.kind}, run {row.run_id[:8]}): local {row.metric} {local:.4f}{interval}, "
                     f"public {row.public:.4f}: {row.gap}")
    return "\n".join(lines)


def cv_vs_public_figure(table: pd.DataFrame):
    """Local score (CV where the run has one, else validation) with its 95 % interval against the public score,
    one point per model.

    Points on the diagonal: the local score predicts the leaderboard; a model far below it overfits its split.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    local = table["cv"].fillna(table["validation"])
    figure, axis = plt.subplots(figsize=(6, 5))
    for has_cv, marker, label in ((True, "o", "CV score"), (False, "s", "validation score (no CV)")):
        chosen = table["cv"].notna() == has_cv
        if chosen.any():
            below = (local - table["local_low"]).fillna(0).clip(lower=0)[chosen]
            above = (table["local_high"] - local).fillna(0).clip(lower=0)[chosen]
            axis.errorbar(local[chosen], table["public"][chosen], xerr=[below, above], fmt=marker, capsize=3,
                          label=f"{label}, 95 % interval")
    for name, x, y, gap in zip(table["name"], local, table["public"], table["gap"]):
        flag = " (!)" if gap.startswith("local score") else ""
        axis.annotate(f"{name}{flag}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    values = pd.concat([table["local_low"], table["local_high"], local, table["public"]]).dropna()
    low, high = values.min(), values.max()
    axis.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="local = public")
    metrics = ", ".join(sorted(set(table["metric"])))
    axis.set(xlabel=f"local score ({metrics})", ylabel="Kaggle public score",
             title="Local vs public score ((!): public outside the local interval)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
