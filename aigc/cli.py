"""`aigc` command line: the MLflow Project's entry points plus helpers.

Every command turns a user's mistake (UserError) into one line on stderr and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aigc.errors import UserError

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                      help="experiment YAML (see configs/)")
OVERRIDES = click.option("--overrides", default="", help='dotted overrides, e.g. "train.epochs=3 data.batch_size=32"')
SMOKE = click.option("--smoke", is_flag=True, help="shrink the config to a seconds-long run")
DATA = click.option("--data", "data_dir", required=True, type=click.Path(), help="competition data folder")


class Group(click.Group):
    """Runs a command and reports UserError as one clear line, exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"aigc: error: {error}", err=True)
            sys.exit(2)


@click.group(cls=Group)
def main():
    """Experiment tracking for Kaggle-style image classification (MLflow + Keras)."""


def _config(config_path, overrides, smoke):
    from aigc import config

    return config.load(config_path, overrides, smoke)


@main.command("make-dataset")
@click.option("--layout", type=click.Choice(["gic", "deepfake", "folders"]), default="gic")
@click.option("--classes", type=click.IntRange(2, 1000), default=10)
@click.option("--per-class", type=click.IntRange(1), default=40)
@click.option("--size", type=click.IntRange(8, 512), default=64)
@click.option("--seed", type=int, default=0)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def make_dataset(layout, classes, per_class, size, seed, out):
    """Write a synthetic, learnable dataset in a competition's layout."""
    from aigc.data.synthetic import make_dataset as generate

    path = generate(out, layout=layout, classes=classes, per_class=per_class, size=size, seed=seed)
    click.echo(f"wrote a {layout} dataset ({classes} classes) to {path}")


@main.command()
@DATA
@CONFIG
@OVERRIDES
@SMOKE
def preprocess(data_dir, config_path, overrides, smoke):
    """Validate a dataset, build its decoded cache, log its report to MLflow."""
    from aigc.steps.preprocess import preprocess as run_preprocess

    result = run_preprocess(data_dir, _config(config_path, overrides, smoke))
    counts = ", ".join(f"{split} {count}" for split, count in result["counts"].items())
    click.echo(f"preprocess run {result['run_id']}: {counts}; converted to RGB {result['converted_to_rgb']}, "
               f"resized {result['resized']}, duplicate groups {len(result['duplicates'])}; cache {result['cache']}")


@main.command()
@DATA
@CONFIG
@OVERRIDES
@SMOKE
@click.option("--resume", default="", help="id of a killed train run to continue")
def train(data_dir, config_path, overrides, smoke, resume):
    """Train one model; log curves, evaluation and the model to MLflow."""
    from aigc.steps.train import train as run_train

    result = run_train(data_dir, _config(config_path, overrides, smoke), resume or None)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    click.echo(f"train run {result['run_id']}: {result['epochs']} epochs; validation {metrics}; "
               f"model {result['model_uri']}")


def _not_implemented(name):
    @main.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def command():
        raise UserError(f"`{name}` is not implemented yet")

    command.__doc__ = f"{name} (not implemented yet)"
    return command


for _name in ("tune", "ensemble", "promote", "predict", "pipeline"):
    _not_implemented(_name)


if __name__ == "__main__":
    main()
