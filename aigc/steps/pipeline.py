"""The `main` entry point: preprocess -> train (each config) -> promote -> predict, as child runs.

With `folds` (`mlflow run . -e main -P cv=5`) each config is cross-validated instead of trained
once, and its fold ensemble is the candidate promote compares. preprocess and train (or cv) are reused when a FINISHED run has the same entry point, params,
git commit and dataset digest (the multistep-workflow cache); promote and predict
depend on the registry's state, so they always run.
"""

from __future__ import annotations

from pathlib import Path

from aigc import registry, tracking
from aigc.config import load
from aigc.errors import UserError

PROJECT = Path(__file__).resolve().parents[2]


def pipeline(data_dir: str | Path, configs: list[str], overrides: str = "",
             out: str = "submissions/submission.csv", folds: int = 0) -> dict:
    """Run the whole pipeline under one parent run; returns the champion and the submission."""
    if not configs:
        raise UserError("--configs is empty: name at least one experiment YAML (e.g. configs/resnet20.yaml)")
    first = load(configs[0], overrides)
    for path in configs[1:]:
        load(path, overrides)  # a bad config fails now, not after an hour of training
    data = str(Path(data_dir).resolve())
    out = str(Path(out).resolve())
    tracking.connect(first.tracking)
    with tracking.run("main", "main") as parent:
        commit = tracking.git_commit()
        tracking.log_params({"data_dir": data})  # with the entry point's params unquoted (args.*)
        steps = {}
        steps["preprocess"] = _step("preprocess", {"data": data, "config": configs[0], "overrides": overrides},
                                    commit)
        digest = tracking.get_run(steps["preprocess"]).data.tags.get("aigc.dataset_digest")
        for index, path in enumerate(configs):
            if folds:
                steps[f"cv-{index}"] = _step("cv", {"data": data, "config": path, "overrides": overrides,
                                                    "folds": folds}, commit, digest)
            else:
                steps[f"train-{index}"] = _step("train", {"data": data, "config": path, "overrides": overrides},
                                                commit, digest)
        steps["promote"] = _step("promote", {"config": configs[0], "overrides": overrides, "data": data})
        steps["predict"] = _step("predict", {"data": data, "config": configs[0], "overrides": overrides,
                                             "out": out})
        tracking.log_dict(steps, "steps.json")
        name = first.tracking.registered_model
        champion = registry.alias_version(name, registry.CHAMPION)
        if champion:  # the link make run prints opens the runs with the competition's metric
            tracking.share_runs_view(parent.info.experiment_id, champion.tags.get("aigc.metric", "accuracy"))
        return {"run_id": parent.info.run_id, "steps": steps, "submission": out, "model": name,
                "champion": champion.version if champion else None,
                "metric": champion.tags.get("aigc.metric") if champion else None,
                "score": champion.tags.get("aigc.score") if champion else None}


def _step(entry_point: str, parameters: dict, commit: str | None = None, digest: str | None = None) -> str:
    """Reuse a matching FINISHED run when `commit` is given, else run the entry point as a child."""
    if commit:
        done = tracking.finished_step(entry_point, parameters, commit)
        if done and (digest is None or done.data.tags.get("aigc.dataset_digest") == digest):
            print(f"[main] {entry_point}: reusing finished run {done.info.run_id}", flush=True)
            return done.info.run_id
    print(f"[main] {entry_point}: starting", flush=True)
    try:
        return tracking.run_project_step(PROJECT, entry_point, parameters)
    except Exception as error:  # the child printed its own message; name the step that failed
        raise UserError(f"step {entry_point} failed ({type(error).__name__}); see its message above") from None
