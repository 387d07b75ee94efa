"""Config: YAML + overrides, typed and frozen; mistakes name the file and key."""

import dataclasses
import time
from pathlib import Path

import pytest

from aigc import config
from aigc.errors import UserError
from conftest import assert_user_error

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
    ("train:\n  budget_minutes: 0\n", "train.budget_minutes must be > 0 minutes, got 0; null "
                                      "(train.budget_minutes=null) turns the budget off"),
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


# Every constraint lives beside its field in aigc/config/schema.py; one case per kind of limit.
@pytest.mark.parametrize("override, fragment", [
    ("tune.max_trials=-1", "tune.max_trials must be >= 1, got -1"),
    ("tune.epochs=0", "tune.epochs must be >= 1"),
    ("tune.retrain_epochs=-2", "tune.retrain_epochs must be >= 0"),
    ("tune.algorithm=grid", "tune.algorithm must be one of"),
    ("tune.space=[1]", "tune.space must be a mapping"),
    ("tracking.min_improvement=-0.1", "tracking.min_improvement must be >= 0"),
    ("tracking.min_improvement=1.5", "tracking.min_improvement must be < 1"),
    ("tracking.registered_model=team/model", "tracking.registered_model must not contain '/'"),
    ("tracking.experiment=", "tracking.experiment must not be empty"),
    ("tracking.enabled=maybe", "tracking.enabled must be bool"),
    # what aigc/data/augment.py used to check itself, now refused before anything is built
    ("augment.width_shift=1.5", "augment.width_shift must be < 1, got 1.5"),
    ("augment.zoom=1.0", "augment.zoom must be < 1"),
    ("augment.rotation=-5", "augment.rotation must be >= 0"),
    ("augment.rotation=400", "augment.rotation must be <= 360"),
    ("augment.shear=90", "augment.shear must be < 90"),
    ("augment.channel_shift=300", "augment.channel_shift must be <= 255"),
    ("augment.brightness=[1.5,0.5]", "augment.brightness must be [low, high] with 0 <= low <= high"),
    ("augment.brightness=bright", "augment.brightness must be a list of two numbers"),
    ("augment.brightness=[1]", "augment.brightness must be a list of two numbers"),
    ("augment.mixup=-0.1", "augment.mixup must be >= 0"),
    ("augment.cutmix=.nan", "augment.cutmix must be a finite number"),
    ("cv.folds=1", "cv.folds must be >= 2, got 1"),
    ("cv.folds=2.5", "cv.folds must be int"),
    ("cv.pool_validation=yes-please", "cv.pool_validation must be bool"),
    ("cv.pseudo_label.threshold=0.5", "cv.pseudo_label.threshold must be > 0.5"),
    ("cv.pseudo_label.threshold=1", "cv.pseudo_label.threshold must be < 1"),
    ("cv.pseudo_label.rounds=0", "cv.pseudo_label.rounds must be >= 1"),
    ("cv.pseudo_label.round=2", "unknown key cv.pseudo_label.round; known keys here: rounds, threshold"),
    ("train.epochs=true", "train.epochs must be int, got True"),
    ("train.plateau.factor=1", "train.plateau.factor must be < 1"),
    ("train.schedule=cosine train.plateau={}", "train.plateau needs train.schedule: constant"),
    ("train.seed=-1", "train.seed must be >= 0"),
    ("data.oversample.x=2", "data.oversample.x is not a class number or 'default'"),
    ("data.val_fraction=1", "data.val_fraction must be < 1"),
])
def test_impossible_values_are_refused_naming_the_key(override, fragment):
    with pytest.raises(UserError) as error:
        config.load(None, override)
    assert fragment in str(error.value) and str(error.value).startswith("<defaults>: ")


def test_cv_section_defaults_and_values(tmp_path):
    defaults = config.load(None).cv
    assert (defaults.folds, defaults.pool_validation, defaults.pseudo_label) == (5, True, None)
    path = write(tmp_path, "cv:\n  folds: 3\n  pool_validation: false\n  pseudo_label: {}\n")
    cfg = config.load(path, "cv.pseudo_label.rounds=2")
    assert (cfg.cv.folds, cfg.cv.pool_validation) == (3, False)
    assert (cfg.cv.pseudo_label.threshold, cfg.cv.pseudo_label.rounds) == (0.95, 2)
    assert cfg.flat()["cv.pseudo_label.threshold"] == 0.95
    assert config.load(path, smoke=True).cv.folds == 2


def test_copies_are_validated_too():
    cfg = config.load(None)
    assert dataclasses.replace(cfg.train, epochs=4).epochs == 4
    with pytest.raises(ValueError, match="epochs"):
        dataclasses.replace(cfg.train, epochs=0)


def test_yaml_aliases_still_work(tmp_path):
    path = write(tmp_path, "train: &shared {epochs: 2, seed: 7}\ntune:\n  epochs: 3\n  max_trials: 4\n"
                           "model:\n  params: {copy: *shared}\n")
    assert config.load(path).model.params == {"copy": {"epochs": 2, "seed": 7}}


def test_alias_bomb_is_refused_fast(tmp_path):
    # "Billion laughs": 10 references per level, 9 levels = 10^9 values from a 600-byte file.
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = write(tmp_path, "\n".join(lines) + "\nmodel:\n  params: {boom: *a8}\n")
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"more than 100000 values once its YAML aliases"):
        config.load(path)
    assert time.perf_counter() - started < 1.0  # expanded, it would be gigabytes and minutes


@pytest.mark.parametrize("text, fragment", [
    ("model:\n  params: &p {inner: *p}\n", "refers to a value that contains it"),
    ("model:\n  params: {a: " + "[" * 1000 + "]" * 1000 + "}\n", "nested more than 32 levels deep"),
    ("# " + "x" * (1 << 20) + "\n", "larger than 1024 KiB"),
])
def test_hostile_yaml_is_refused_naming_the_file(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as error:
        config.load(path)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_not_a_regular_file(tmp_path):
    with pytest.raises(UserError, match="not a regular file"):
        config.load(tmp_path)
    with pytest.raises(UserError, match="not a regular file"):
        config.load("/dev/zero")  # endless: must not be read


def test_non_utf8_config_and_override(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=f"config file {path}: not valid UTF-8"):
        config.load(path)
    # argv carries bytes that aren't UTF-8 as surrogates (os.fsdecode)
    with pytest.raises(UserError, match="override .*name=caf.*: not valid UTF-8"):
        config.load(None, ["name=caf\udce9"])
    with pytest.raises(UserError, match="not valid UTF-8"):
        config.load(None, [b"name=caf\xe9"])


def test_alias_bomb_in_an_override_is_refused():
    levels = ["&l0 [x,x,x,x,x,x,x,x,x,x]"] + [f"&l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "[" + ", ".join(levels) + "]"  # 10^9 values once expanded
    with pytest.raises(UserError, match="override .*: holds more than"):
        config.load(None, [f"model.params={{b: {bomb}}}"])


def test_cli_reports_hostile_config_as_one_line(tmp_path, cli):
    levels = "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    path = write(tmp_path, "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + levels)
    assert_user_error(cli("train", "--data", tmp_path, "--config", path), str(path), "YAML aliases")
    assert_user_error(cli("train", "--data", tmp_path, "--overrides", "name=caf\udce9 tune.max_trials=-1"),
                      "not valid UTF-8")
    assert_user_error(cli("tune", "--data", tmp_path, "--overrides", "tune.max_trials=-1"),
                      "tune.max_trials must be >= 1, got -1")


def test_logged_yaml_loads_back_to_the_same_config(tmp_path):
    cfg = config.load(CONFIGS[0], "cv.pseudo_label={} data.oversample.3=2 augment.brightness=[0.5,1] train.plateau={}")
    path = write(tmp_path, cfg.to_yaml())
    assert dataclasses.replace(config.load(path), source=cfg.source) == cfg


def test_a_typo_is_told_before_tensorflow_or_mlflow_is_imported(dataset_factory, tmp_path):
    """A mistyped override or data folder is one message in under a second, not after TensorFlow's and MLflow's
    imports (9-11 s on 2 cores): every command reads its config before importing its step, and the message is
    written without MLflow."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    data, config = dataset_factory("gic"), ROOT / "configs/demo.yaml"
    typo = ["--data", data, "--config", config, "--overrides", "train.epochz=3"]
    commands = [[step, *typo] for step in ("preprocess", "train", "cv", "tune", "predict")] + [
        [step, *typo[2:]] for step in ("promote", "runs", "submit")] + [["ensemble", "--csv", "a.csv", *typo[2:]]] + [
        ["train", "--data", tmp_path / "no-such-folder", "--config", config]]
    script = ("import json, sys\nfrom aigc.cli import main\nfor args in json.loads(sys.argv[1]):\n"
              "    try:\n        main(args)\n    except SystemExit as end:\n        print('exit', end.code)\n"
              "print('imported:', sorted({'tensorflow', 'mlflow'} & set(sys.modules)))")
    arguments = json.dumps([[str(word) for word in args] for args in commands])
    done = subprocess.run([sys.executable, "-c", script, arguments], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split("\n")[:-1] == ["exit 2"] * len(commands) + ["imported: []"], (
        done.stdout + done.stderr)
    assert done.stderr.count("unknown key train.epochz") == 9 and "no-such-folder does not exist" in done.stderr
