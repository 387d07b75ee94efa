"""`aigc` command line: the MLflow Project's entry points plus helpers.

Every command turns a user's mistake (UserError) into one line on stderr and exit 2, and Ctrl-C
into exit 130 (what a shell reports for SIGINT), after the usual clean-up of temporary files.
"""

from __future__ import annotations

import re
import sys

import click

from aigc.errors import UserError, mask_uri  # mask_uri: no message shows a password inside a URI

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False), default="",
                      help="experiment YAML (see configs/); default: the one for the --data folder's layout")
OVERRIDES = click.option("--overrides", default="", help='dotted overrides, e.g. "train.epochs=3 data.batch_size=32"')
SMOKE = click.option("--smoke", is_flag=True, help="shrink the config to a seconds-long run")


def _folder(ctx, param, value):
    """A --data folder that is not there is the first mistake to hear about: before the seconds of imports, and
    before the tracking connection makes an experiment (or an mlflow.db) for a command that cannot run."""
    if value:
        from aigc.data.layouts import data_folder

        data_folder(value)
    return value


DATA = click.option("--data", "data_dir", required=True, type=click.Path(), callback=_folder,
                    help="competition data folder")


# OSErrors about a path, which aigc's own code raises with a message that names it
PATH_ERRORS = (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class Group(click.Group):
    """Runs a command and reports a UserError, or an OSError about a path, as one clear line, exit status 2."""

    def invoke(self, ctx):
        session = sys.modules.get("aigc.tracking.session")
        if session:  # a command run in-process after another (tests): only its own runs are announced
            session.LAST_EXPERIMENT_ID = None
        try:
            result = super().invoke(ctx)
            _browse_hint()
            return result
        except KeyboardInterrupt:  # click would say "Aborted!" and exit 1, like a failure
            click.echo("aigc: interrupted", err=True)
            sys.exit(130)
        except UserError as error:
            _fail(str(error))
        except OSError as error:
            # a path the user named or the disk refused (not a folder, a device, full, no permission):
            # the same for every command, so said once here rather than before every write
            if error.filename:
                _fail(f"{error.filename}: {error.strerror}; check that path (a folder where a folder belongs, "
                      "writable, space left)")
            if isinstance(error, PATH_ERRORS):  # aigc's own message about a path
                _fail(str(error))
            raise  # not about a path: a bug, and its traceback helps


def _browse_hint() -> None:
    """Every command that ended a run says where to see it: its experiment's runs view."""
    session = sys.modules.get("aigc.tracking.session")  # loaded by every command that ran a run
    link = session and session.runs_link()
    if link:
        click.echo(f"browse the runs: {link}")


def _fail(message: str):
    click.echo(f"aigc: error: {mask_uri(message)}", err=True)
    sys.exit(2)


@click.group(cls=Group)
def main():
    """Experiment tracking for Kaggle-style image classification (MLflow + Keras)."""


def _config(config_path, overrides, smoke, data_dir=None, step="train", run_id=""):
    """The experiment config. None given ("" from MLproject): the config of the run the command is given
    (`run_id`: its experiment too), else the default of the --data folder's layout.

    Commands read it before importing their step: a typo is one message in under a second, not one after
    TensorFlow's and MLflow's imports (9-11 s on 2 cores)."""
    from aigc import config
    from aigc.data.layouts import default_config

    if config_path:
        return config.load(config_path, overrides, smoke)
    config.load(None, overrides, smoke)  # a broken override is the first mistake to hear about, before anything
    if run_id and re.fullmatch(r"[0-9a-f]{32}", run_id):
        from aigc import tracking

        made, text, experiment = tracking.run_config(run_id)
        where = f"run {made}'s config.yaml" if text else f"run {run_id}'s experiment"
        click.echo(f"aigc: no --config given: {where}, experiment {experiment!r}", err=True)
        return config.load_text(text, where, {"tracking.experiment": experiment, **config.parse_overrides(overrides)},
                                smoke)
    if data_dir:
        config_path = default_config(data_dir, step)
        click.echo(f"aigc: no --config given: using {config_path} (the default for {data_dir}'s layout)", err=True)
    return config.load(config_path or None, overrides, smoke)


@main.command("make-dataset")
@click.option("--layout", type=click.Choice(["gic", "deepfake", "folders"]), default="gic")
@click.option("--classes", type=click.IntRange(2, 1000), default=10)
@click.option("--per-class", type=click.IntRange(1), default=40)
@click.option("--size", type=click.IntRange(8, 512), default=64)
@click.option("--seed", type=int, default=0)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--label-noise", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="flip this fraction of train/val labels; the flipped ids go to OUT/flipped_ids.csv")
@click.option("--near-duplicates", type=click.IntRange(0), default=0,
              help="add this many edited copies of train images to val/test; listed in OUT/near_duplicates.csv")
def make_dataset(layout, classes, per_class, size, seed, out, label_noise, near_duplicates):
    """Write a synthetic, learnable dataset in a competition's layout (optionally with known faults)."""
    from aigc.data.synthetic import make_dataset as generate
    from aigc.output import check_output_folder

    check_output_folder(out)
    try:
        path = generate(out, layout=layout, classes=classes, per_class=per_class, size=size, seed=seed,
                        label_noise=label_noise, near_duplicates=near_duplicates)
    except (ValueError, FileExistsError) as error:
        raise UserError(str(error)) from None
    faults = "".join([f"; {label_noise:g} of the labels flipped (flipped_ids.csv)" if label_noise else "",
                      f"; {near_duplicates} near-duplicates (near_duplicates.csv)" if near_duplicates else ""])
    click.echo(f"wrote a {layout} dataset ({classes} classes) to {path}{faults}")


@main.command()
@DATA
@CONFIG
@OVERRIDES
@SMOKE
def preprocess(data_dir, config_path, overrides, smoke):
    """Validate a dataset, build its decoded cache, log its report to MLflow."""
    config = _config(config_path, overrides, smoke, data_dir)
    from aigc.steps.preprocess import preprocess as run_preprocess

    result = run_preprocess(data_dir, config)
    counts = ", ".join(f"{split} {count}" for split, count in result["counts"].items())
    click.echo(f"preprocess run {result['run_id']}: {counts}; converted to RGB {result['converted_to_rgb']}, "
               f"resized {result['resized']}, duplicate groups {len(result['duplicates'])}, near-duplicate groups "
               f"{len(result['near_duplicates'])}; cache {result['cache']}")


@main.command()
@DATA
@CONFIG
@OVERRIDES
@SMOKE
@click.option("--resume", default="", help="id of a killed train run to continue")
def train(data_dir, config_path, overrides, smoke, resume):
    """Train one model; log curves, evaluation and the model to MLflow."""
    config = _config(config_path, overrides, smoke, data_dir)
    from aigc.steps.train import train as run_train

    result = run_train(data_dir, config, resume or None)
    if result["run_id"] is None and result["folder"] is None:  # a multi-worker run's other worker
        click.echo("train: this worker's share is done; the chief records the run")
        return
    if result["folder"]:
        click.echo(f"train (untracked): {result['epochs']} epochs; on {result['scored_on']}; "
                   f"results in {result['folder']}")
    else:
        click.echo(f"train run {result['run_id']}: {result['epochs']} epochs; on {result['scored_on']}; "
                   f"model {result['model_uri']}")


@main.command()
@DATA
@CONFIG
@OVERRIDES
@SMOKE
@click.option("--folds", type=click.IntRange(0), default=0, help="number of folds (0: the config's cv.folds)")
@click.option("--resume", default="", help="id of a killed cv run: train only its missing folds")
def cv(data_dir, config_path, overrides, smoke, folds, resume):
    """K-fold cross-validation: a nested train run per fold, OOF probabilities, the fold ensemble as a model."""
    overrides = f"{overrides} cv.folds={folds}" if folds else overrides
    config = _config(config_path, overrides, smoke, data_dir)
    from aigc.steps.cv import cross_validate

    result = cross_validate(data_dir, config, resume or None)
    spread = result["fold_spread"]
    metric = result["metric"]
    low, high = result["interval"]
    click.echo(f"cv run {result['run_id']}: {result['folds']} folds; out-of-fold {metric} {result['score']:.4f} "
               f"(95 % CI {low:.4f}-{high:.4f}; TTA and temperature cross-fitted; fold mean {spread[f'fold_{metric}_mean']:.4f} ± {spread[f'fold_{metric}_std']:.4f}); "
               f"TTA {' + '.join(result['tta'])}; fold ensemble {result['model_uri']}")


@main.group()
def audit():
    """Audit the data: likely mislabelled images (near-duplicates: see preprocess)."""


@audit.command("labels")
@DATA
@click.option("--run", "run_id", required=True, help="id of a finished cv run (its out-of-fold probabilities)")
@CONFIG
@OVERRIDES
def audit_labels(data_dir, run_id, config_path, overrides):
    """Confident learning on a cv run's OOF probabilities: ranked suspects, gallery, fix files."""
    config = _config(config_path, overrides, False, data_dir, run_id=run_id)
    from aigc.steps.audit import audit_labels as run_audit

    result = run_audit(data_dir, config, run_id)
    click.echo(f"audit run {result['run_id']} (cv run {result['cv_run']}): {len(result['suspects'])} of "
               f"{result['images']} images look mislabelled; see audit/label_suspects.html, fixes/exclude_ids.csv "
               "and fixes/relabel.csv (data.exclude_ids / data.relabel)")


@main.command()
@CONFIG
@OVERRIDES
@click.option("--version", default="", help="promote this registered version by hand")
@click.option("--run", "run_id", default="", help="consider only this finished run (it must still beat the champion)")
@click.option("--rollback", is_flag=True, help="move champion back to the previous champion")
@click.option("--data", "data_dir", default="", type=click.Path(), callback=_folder,
              help="the competition data: thumbnails in the gallery of images champion and challenger disagree on")
def promote(config_path, overrides, version, run_id, rollback, data_dir):
    """Register the best finished run; move `champion` only if it beats the current one."""
    config = _config(config_path, overrides, False, data_dir or None, run_id=run_id)
    from aigc.steps.promote import promote as run_promote

    result = run_promote(config, version or None, rollback, run_id or None, data_dir or None)
    if rollback:
        click.echo(f"rolled back champion: version {result[0]} -> {result[1]}")
    else:
        click.echo(result.text())


@main.command()
@click.argument("run_ids", nargs=-1)
@click.option("--data", "data_dir", default="", type=click.Path(), callback=_folder,
              help="the competition data: thumbnails and class names on the pages")
def compare(run_ids, data_dir):
    """Compare runs on the images both have held-out predictions for: per-class scores, confusion matrices,
    McNemar's test and the images they classify differently, side by side (each run against the first)."""
    from aigc.steps.compare import compare as run_compare, summary

    # `mlflow run -P runs="A B"` passes the ids as one argument
    click.echo(summary(run_compare([i for text in run_ids for i in text.split()], data_dir or None)))


@main.command()
@DATA
@CONFIG
@OVERRIDES
@click.option("--model", default="", help="model URI, NAME@alias, version number or run id (default: champion)")
@click.option("--out", default="submissions/submission.csv", type=click.Path(dir_okay=False), show_default=True)
@click.option("--tta", type=click.BOOL, default=False, help="average with horizontally flipped images")
@click.option("--allow-local-members", is_flag=True,
              help="let an ensemble load members from local paths, not only from the tracking store")
def predict(data_dir, config_path, overrides, model, out, tta, allow_local_members):
    """Write a submission from the champion (or --model) in the competition's format."""
    config = _config(config_path, overrides, False, data_dir)
    from aigc.steps.predict import predict as run_predict

    result = run_predict(data_dir, config, model, out, tta, allow_local_members)
    version = f" (version {result['version']})" if result["version"] else ""
    click.echo(f"predict run {result['run_id']}: {result['rows']} rows from {result['model_uri']}{version} "
               f"-> {result['submission']}")


@main.command()
@DATA
@click.option("--configs", default="", help="space-separated experiment YAMLs to train (default: the one for the "
              "--data folder's layout, e.g. configs/resnet20.yaml for gic)")
@OVERRIDES
@click.option("--out", default="submissions/submission.csv", type=click.Path(dir_okay=False), show_default=True)
@click.option("--cv", "folds", type=click.IntRange(0), default=0,
              help="cross-validate each config with this many folds: the fold ensembles are the candidates (0: train)")
def pipeline(data_dir, configs, overrides, out, folds):
    """The whole pipeline: preprocess -> train (or cv) each config -> promote -> predict (entry point `main`)."""
    from aigc.data.layouts import default_config
    from aigc.steps.pipeline import pipeline as run_pipeline

    from aigc.output import check_output_file

    check_output_file(out, inputs=(data_dir, *configs.split()))  # before an hour of training, not after
    result = run_pipeline(data_dir, configs.split() or [str(default_config(data_dir))], overrides, out, folds)
    score = f", {result['metric']} {float(result['score']):.4f}" if result["score"] else ""
    click.echo(f"\nchampion: {result['model']} version {result['champion']}{score}")
    click.echo(f"submission: {result['submission']}")


@main.command()
@CONFIG
@OVERRIDES
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
def runs(config_path, overrides, limit):
    """Leaderboard: the experiment's runs ranked by the competition metric."""
    config = _config(config_path, overrides, False)
    from aigc.steps.leaderboard import format_table, leaderboard

    click.echo(format_table(*leaderboard(config, limit)))


@main.command()
@click.option("--data", "data_dir", type=click.Path(), callback=_folder,
              help="competition data folder (not needed with --csv)")
@click.option("--members", default="", help="space-separated run ids, model URIs, NAME@alias or versions")
@click.option("--top-k", type=click.IntRange(2), default=3, show_default=True,
              help="without --members: the k best finished train runs")
@click.option("--method", type=click.Choice(["hard", "soft", "weighted", "greedy"]), default="greedy",
              show_default=True)
@CONFIG
@OVERRIDES
@click.option("--csv", "csv_files", multiple=True, type=click.Path(dir_okay=False),
              help="majority-vote these submission files instead (repeat or list after --csv)")
@click.option("--out", default="submissions/merged.csv", type=click.Path(dir_okay=False), show_default=True)
@click.argument("more_csv", nargs=-1, type=click.Path(dir_okay=False))
def ensemble(data_dir, members, top_k, method, config_path, overrides, csv_files, out, more_csv):
    """Combine finished runs into a registrable ensemble model, or merge submission CSVs."""
    submissions = [*csv_files, *more_csv]
    if not submissions and not data_dir:
        raise UserError("--data is required (the members' validation images), or use --csv to merge submissions")
    config = (_config(config_path, overrides, False) if submissions else
              _config(config_path, overrides, False, data_dir, run_id=(members.split() or [""])[0]))
    from aigc.steps import ensemble as step

    if submissions:
        path = step.merge_csv(submissions, out, config)
        click.echo(f"merged {len(submissions)} submissions -> {path}")
        return
    limit = config.ensemble.max_members
    if max(len(members.split()), top_k) > limit:
        raise UserError(f"an ensemble has at most {limit} members (ensemble.max_members); give fewer --members or a "
                        "smaller --top-k")
    result = step.ensemble(data_dir, config, members.split(), top_k, method)
    members_text = ", ".join(f"{name} {value:.4f}" for name, value in result["members"].items())
    low, high = result["interval"]
    click.echo(f"ensemble run {result['run_id']}: {result['metric']} {result['score']:.4f} cross-fitted "
               f"(95 % CI {low:.4f}-{high:.4f}; {result['in_sample']:.4f} on the images it was fitted on) "
               f"(members: {members_text}); weights {[round(w, 3) for w in result['weights']]}; "
               f"model {result['model_uri']}")


@main.command()
@click.option("--competition", default="", help="Kaggle competition slug (the last part of its URL)")
@click.option("--run", "run_id", default="", help="the predict run whose submission to send (default: the newest)")
@click.option("--version", default="", help="instead of --run: the newest predict run of this registered version")
@click.option("-m", "--message", default="", help="the submission's description on Kaggle")
@click.option("--wait", type=click.FloatRange(0), default=600, show_default=True,
              help="seconds to wait for the public score")
@click.option("--score", type=float, default=None, help="record this public score by hand instead (no network)")
@CONFIG
@OVERRIDES
def submit(competition, run_id, version, message, wait, score, config_path, overrides):
    """Submit a predict run's file to Kaggle; record the public score on the runs and the version."""
    config = _config(config_path, overrides, False, run_id=run_id)
    from aigc.steps import submit as step

    if score is not None:
        result = step.record_score(config, score, run_id, version, message, competition)
        click.echo(f"predict run {result['run_id']}: public score {score} recorded")
        return
    if not competition or not message:
        raise UserError("submit needs --competition SLUG and -m MESSAGE (or --score X to record a score by hand)")
    result = step.submit(config, competition, run_id, version, message, wait)
    if result["score"] is None:
        click.echo(f"predict run {result['run_id']}: submitted to {competition} as {result['ref']}; Kaggle has not "
                   f"scored it after {wait:g} s. Once kaggle.com shows the score: "
                   f"aigc submit --score X --run {result['run_id']}")
    else:
        click.echo(f"predict run {result['run_id']}: submitted to {competition} as {result['ref']}; "
                   f"public score {result['score']}")


@main.command()
def sync():
    """Upload results that runs kept in .aigc-outbox/ while the tracking server was away."""
    from aigc import tracking

    outcomes = tracking.sync()
    for run_id, outcome in outcomes:
        if outcome in ("uploaded", "unreachable"):
            click.echo(f"run {run_id}: {'uploaded' if outcome == 'uploaded' else 'server still unreachable, kept'}")
    if not outcomes:
        click.echo("nothing to upload")
    refusals = [outcome for _, outcome in outcomes if outcome not in ("uploaded", "unreachable")]
    if refusals:  # the server answered and said no: retrying will not help, fixing the cause will
        raise UserError("; ".join(refusals) + "; the results stay in .aigc-outbox/ until a sync succeeds")
    if any(outcome == "unreachable" for _, outcome in outcomes):
        raise UserError(f"tracking server {tracking.display_uri()} unreachable; try again later")


@main.command()
@DATA
@CONFIG
@OVERRIDES
@SMOKE
@click.option("--resume", default="", help="id of a tune run to continue (a worker: the chief's run)")
@click.option("--retrain-epochs", type=int, default=-1, show_default=True,
              help="retrain the best trial this long (0: skip; -1: tune.retrain_epochs)")
def tune(data_dir, config_path, overrides, smoke, resume, retrain_epochs):
    """keras-tuner search, one nested MLflow run per trial; the best trial retrained as a train run."""
    config = _config(config_path, overrides, smoke, data_dir, "tune")
    from aigc.steps.tune import tune as run_tune

    result = run_tune(data_dir, config, resume or None, retrain_epochs)
    retrained = f"; best retrained as run {result['retrain_run_id']}" if result.get("retrain_run_id") else ""
    score = result.get("best_score")
    click.echo(f"tune run {result['run_id']}: {result['trials']} trials, best score "
               f"{score if score is None else round(score, 4)}{retrained}")


if __name__ == "__main__":
    main()
