"""Config: YAML + overrides, typed and frozen; mistakes name the file and key."""

import dataclasses
from pathlib import Path

import pytest

from aigc import config
from aigc.errors import UserError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_are_typed_and_frozen(tmp_path):
    path = write(tmp_path, "name: exp\ntrain:\n  epochs: 5\naugment:\n  brightness: [0.9, 1.1]\n")
    cfg = config.load(path, "train.epochs=3 data.batch_size=32 train.learning_rate=5e-4")
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.train.learning_rate) == (3, 32, 5e-4)
    assert cfg.augment.brightness == (0.9, 1.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 9
    assert cfg.flat()["train.epochs"] == 3


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  epochz: 3\n", "unknown key train.epochz"),
    ("train:\n  epochs: three\n", "train.epochs must be int"),
    ("train:\n  epochs: 0\n", "train.epochs must be >= 1"),
    ("data:\n  layout: kaggle\n", "data.layout must be one of"),
    ("augment:\n  brightness: [1.2, 0.8]\n", "augment.brightness"),
    ("train:\n  learning_rate: -1\n", "train.learning_rate"),
    ("data:\n  oversample: {4: 0}\n", "data.oversample.4"),
    ("train: [1, 2]\n", "train must be a mapping"),
    ("train: {epochs: 2\n", "not valid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as error:
        config.load(path)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_bad_override_names_key(tmp_path):
    with pytest.raises(UserError, match="unknown key data.batchsize"):
        config.load(None, "data.batchsize=3")
    with pytest.raises(UserError, match="expected key=value"):
        config.load(None, "train.epochs")


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        config.load(tmp_path / "nope.yaml")


def test_smoke_shrinks_but_never_grows(tmp_path):
    path = write(tmp_path, "data: {image_size: 128, batch_size: 8}\ntrain: {epochs: 80}\n")
    cfg = config.load(path, smoke=True)
    assert cfg.smoke and cfg.train.epochs == 1 and cfg.data.image_size == 32
    assert cfg.data.batch_size == 8 and cfg.data.limit > 0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_names_its_command(path):
    cfg = config.load(path)
    assert cfg.name
    assert path.read_text().startswith("#") and "mlflow run" in path.read_text().splitlines()[0]
