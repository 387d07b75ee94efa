"""Budget-aware training, precision, and the modern training options: cheap real runs, what a user sees."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import ROOT, assert_user_error, runs

BUDGET = 0.5  # minutes: the 3-minute run, shrunk (a loaded 2-core machine takes ~20 s to trace the step)


@pytest.fixture(scope="module")
def budgeted(module_store, dataset_factory):
    """One budgeted train run with every modern option on: cosine with warm-up, AdamW, EMA, random erasing."""
    import time

    from aigc.cli import main
    from click.testing import CliRunner

    data = dataset_factory("gic", classes=4, per_class=40)
    overrides = (f"train.budget_minutes={BUDGET} train.epochs=200 train.schedule=cosine train.warmup_epochs=1 "
                 "train.optimizer=adamw train.weight_decay=0.0001 train.ema=0.9 augment.random_erasing=0.25 "
                 "model.params.filters=[8,16,16] model.params.dense_units=16 data.limit=160")
    started = time.monotonic()
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--config", str(ROOT / "configs/demo_cnn.yaml"),
                                       "--overrides", overrides])
    seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    (run,) = runs(module_store, "train")
    return module_store, run, result.output, seconds


def test_budgeted_run_logs_its_plan_and_ends_at_the_schedules_end(budgeted):
    uri, run, output, seconds = budgeted
    metrics, tags = run.data.metrics, run.data.tags
    planned, actual = metrics["budget_planned_epochs"], metrics["budget_actual_epochs"]
    assert planned >= 1 and metrics["budget_images_per_second"] > 0
    assert f"aigc: budget {BUDGET:g} min: " in output and "images/s" in output  # the plan, as it is made
    assert actual == planned and tags["aigc.budget_stopped_by_budget"] == "false"
    assert metrics["budget_seconds_used"] <= BUDGET * 60 * 1.1  # fit inside the budget (a partial epoch's validation)
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "epoch/learning_rate")
    assert len(history) == actual
    rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert rates[-1] < 1e-3 * 0.002  # the last epoch ends where the cosine does (peak 0.002)
    assert "final_accuracy" in metrics and tags["aigc.model_uri"].startswith("models:/")
    assert run.data.params["train.budget_minutes"] == str(BUDGET)


def test_ema_is_kept_only_where_it_scores_better_than_the_raw_weights(budgeted):
    """train.ema=0.9: the run compared the averaged best epoch with the last raw weights and kept the better."""
    _, run, _, _ = budgeted
    metrics, tags = run.data.metrics, run.data.tags
    averaged, raw = metrics["ema_best_val_accuracy"], metrics["raw_last_val_accuracy"]
    assert tags["aigc.weights"] == ("raw_last" if raw > averaged else "ema_best")
    # the comparison is made on a slice of the training images held out of fitting, never on validation
    assert tags["aigc.select_on"] == "inner" and tags["aigc.score_fit"] == "cross-fitted"  # (its TTA set)
    assert "of the choosing images" in tags["mlflow.note.content"]
    assert "The model keeps" in tags["mlflow.note.content"]


def test_ema_that_has_not_caught_up_loses_to_the_raw_weights(tmp_path):
    """Momentum 0.999 over a few dozen steps leaves the average near the initial weights: the raw ones are kept."""
    import tensorflow as tf

    from aigc import config, training

    cfg = config.load(None, "train.ema=0.999 train.epochs=3 train.checkpoint_monitor=val_loss train.learning_rate=0.01")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (256, 4, 4, 3)).astype("float32")
    labels = (images.mean(axis=(1, 2, 3)) > 0.5).astype(int)  # learnable in a few steps
    data = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, 2))).batch(32)
    training.set_seed(cfg.train)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    training.compile_model(model, cfg.train)
    training.fit(model, data, data, cfg.train, tmp_path, [], 256)
    metrics, tags = training.choose_weights(model, tmp_path, cfg.train, data)
    assert tags == {"aigc.weights": "raw_last"}
    assert metrics["raw_last_val_loss"] < metrics["ema_best_val_loss"]
    assert model.evaluate(data, verbose=0, return_dict=True)["loss"] == pytest.approx(metrics["raw_last_val_loss"])


def test_budgeted_fit_resumes_with_its_plan_inside_the_budget(tmp_path):
    """Killed mid-run (an exception after the plan is fixed), a resumed fit keeps the plan and the budget."""
    from aigc import config, training

    cfg = config.load(None, "train.budget_minutes=0.3 train.epochs=500 train.schedule=onecycle")
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(0, 255, (256, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 256)
    import tensorflow as tf

    train_ds = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, 2))).batch(32)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt  # what a kill leaves: the backup of epoch 2 may or may not be written

    def fit(extra):
        training.set_seed(cfg.train)
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                  keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2, activation="softmax")])
        training.compile_model(model, cfg.train)
        history = training.fit(model, train_ds, train_ds, cfg.train, tmp_path, extra, 256)
        return model, history

    with pytest.raises(KeyboardInterrupt):
        fit([Crash()])
    before = json.loads((tmp_path / training.PLAN).read_text())
    model, history = fit([])
    after = json.loads((tmp_path / training.PLAN).read_text())
    assert history.epoch[0] >= 2  # continued, not restarted
    # the plan kept (or shortened, when the resumed process is slower) and carried out to the schedule's end
    assert after["actual_epochs"] == after["planned_epochs"] <= before["planned_epochs"]
    assert after["planned_epochs"] == before["planned_epochs"] or after["shortened"]
    assert after["seconds_used"] <= 0.3 * 60 * 1.1
    if not after.get("stopped_by_budget"):  # a load spike may still cut the last epoch short: the budget wins
        assert training.current_learning_rate(model) == pytest.approx(1e-3 / 1e4, rel=1e-3)  # one-cycle's floor


def test_precision_auto_follows_the_cpu_and_the_old_switch_still_works():
    from aigc import config, training

    flags = training.cpu_flags()
    expected = "mixed_bfloat16" if flags & {"amx_bf16", "avx512_bf16"} else "float32"
    assert training.precision_policy(config.load(None, "train.precision=auto").train) == expected
    assert training.precision_policy(config.load(None, "train.mixed_precision=true").train) == "mixed_float16"
    assert training.precision_policy(config.load(None).train) == "float32"
    try:
        training.set_seed(config.load(None, "train.precision=mixed_bfloat16").train)
        from aigc.models import build_model

        model = build_model("resnet", (32, 32, 3), 5, {"depth": 8})
        assert model.get_layer(index=-3).dtype_policy.name == "mixed_bfloat16"
        assert model.outputs[0].dtype == "float32"  # the softmax stays float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("override, fragments", [
    ("train.precision=mixed_bfloat16 train.mixed_precision=true", ["train.mixed_precision", "set only train.precision"]),
    ("train.budget_minutes=0", ["train.budget_minutes", "> 0"]),
    ("train.ema=1", ["train.ema"]),
    ("augment.random_erasing=1.5", ["augment.random_erasing"]),
    ("train.warmup_epochs=2", ["train.warmup_epochs", "cosine or onecycle"]),
])
def test_option_mistakes_are_one_clear_message(dataset_factory, store, cli, override, fragments):
    result = cli("train", "--data", dataset_factory("gic"), "--config", ROOT / "configs/demo.yaml",
                 "--overrides", override)
    assert_user_error(result, *fragments)


def test_adamw_decays_kernels_only():
    """A zero-gradient step moves weights only by the decoupled decay: kernels shrink, biases and norms don't."""
    from aigc import config, training

    optimizer = training.make_optimizer(config.load(None, "train.optimizer=adamw train.weight_decay=0.5 "
                                                          "train.learning_rate=1").train)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    for variable in model.trainable_variables:
        variable.assign(np.ones(variable.shape))
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    moved = {v.name for v in model.trainable_variables if not np.allclose(v.numpy(), 1.0)}
    assert moved == {"kernel"}


def test_fast_resnet_is_pages_resnet9_at_full_width():
    from aigc.models import build_model

    assert build_model("fast_resnet", (32, 32, 3), 10, {}).count_params() == 6_577_610  # DAWNBench's ResNet-9
    assert build_model("fast_resnet", (64, 64, 3), 100, {"width": 24}).count_params() == 946_060  # gic_fast


@pytest.mark.slow  # minutes on a loaded 2-core machine: the recipes' networks are wide
@pytest.mark.parametrize("recipe", ["gic_fast", "deepfake_fast"])
def test_fast_recipes_train_smoke_sized(dataset_factory, store, cli, recipe):
    layout = recipe.split("_")[0]
    result = cli("train", "--data", dataset_factory(layout), "--config", ROOT / f"configs/{recipe}.yaml", "--smoke")
    assert result.exit_code == 0, result.output
    (run,) = runs(store, "train")
    assert run.data.params["train.budget_minutes"] == "60.0" and "budget_planned_epochs" in run.data.metrics
