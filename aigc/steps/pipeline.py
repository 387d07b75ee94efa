"""The `main` entry point: preprocess -> train (each config) -> promote -> predict, as child runs.

With `folds` (`mlflow run . -e main -P cv=5`) each config is cross-validated instead of trained
once, and its fold ensemble is the candidate promote compares. preprocess and train (or cv) are
reused when a FINISHED run of that entry point was made by the same resolved config (overrides and
label-fix files included: Config.digest), the same aigc code (its source files as they are, an
uncommitted edit included) and the same dataset; promote and predict depend on the registry's
state, so they always run.
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
        tracking.log_params({"data_dir": data})  # with the entry point's params unquoted (args.*)
        steps = {}
        steps["preprocess"] = _step("preprocess", {"data": data, "config": configs[0], "overrides": overrides},
                                    first.digest("data"))
        digest = tracking.get_run(steps["preprocess"]).data.tags.get("aigc.dataset_digest")
        for index, path in enumerate(configs):
            if folds:
                config = load(path, f"{overrides} cv.folds={folds}")
                steps[f"cv-{index}"] = _step("cv", {"data": data, "config": path, "overrides": overrides,
                                                    "folds": folds}, config.digest(), digest)
            else:
                steps[f"train-{index}"] = _step("train", {"data": data, "config": path, "overrides": overrides},
                                                load(path, overrides).digest(), digest)
        steps["promote"] = _step("promote", {"config": configs[0], "overrides": overrides, "data": data})
        steps["predict"] = _step("predict", {"data": data, "config": configs[0], "overrides": overrides,
                                             "out": out})
        tracking.log_dict(steps, "steps.json")
        name = first.tracking.registered_model
        champion = registry.alias_version(name, registry.CHAMPION)
        return {"run_id": parent.info.run_id, "steps": steps, "submission": out, "model": name,
                "champion": champion.version if champion else None,
                "metric": champion.tags.get("aigc.metric") if champion else None,
                "score": champion.tags.get("aigc.score") if champion else None}


def _step(entry_point: str, parameters: dict, config_digest: str | None = None, digest: str | None = None) -> str:
    """Reuse a FINISHED run of the same config, code (and dataset `digest`) when `config_digest` is given,
    else run the entry point as a child."""
    if config_digest:
        done = tracking.finished_step(entry_point, config_digest, tracking.code_digest(), digest)
        if done:
            print(f"[main] {entry_point}: reusing finished run {done.info.run_id} (same config, code and data)",
                  flush=True)
            return done.info.run_id
    print(f"[main] {entry_point}: starting", flush=True)
    try:
        return tracking.run_project_step(PROJECT, entry_point, parameters)
    except Exception as error:  # the child printed its own message; name the step that failed
        raise UserError(f"step {entry_point} failed ({type(error).__name__}); see its message above") from None
