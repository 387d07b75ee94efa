"""Budget-aware training, precision, and the modern training options: cheap real runs, what a user sees."""

from __future__ import annotations

import itertools
import json
import math

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import ROOT, assert_user_error, runs

BUDGET = 0.5  # minutes, on the fake clock below: the 3-minute run, shrunk
TICK = 0.6  # seconds the budgeted run's clock moves each time the plan reads it (once a batch, and as an epoch or its
#            validation begins and ends)


@pytest.fixture(scope="module")
def budgeted(module_store, dataset_factory):
    """One budgeted train run with every modern option on: cosine with warm-up, AdamW, EMA, random erasing.

    Its plan reads a clock that moves TICK a read, not the wall clock: the run is the same on any machine
    and takes seconds (the fill on a real clock is measured by `make bench`, benchmarks/budget.py)."""
    from aigc.cli import main
    from aigc.training import budget
    from click.testing import CliRunner

    data = dataset_factory("gic", classes=4, per_class=40)
    overrides = (f"train.budget_minutes={BUDGET} train.epochs=200 train.schedule=cosine train.warmup_epochs=1 "
                 "train.optimizer=adamw train.weight_decay=0.0001 train.ema=0.9 augment.random_erasing=0.25 "
                 "model.params.filters=[8,16,16] model.params.dense_units=16 data.limit=160")
    ticks = itertools.count()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(budget, "CLOCK", lambda: next(ticks) * TICK)
        result = CliRunner().invoke(main, ["train", "--data", str(data), "--config",
                                           str(ROOT / "configs/demo_cnn.yaml"), "--overrides", overrides])
    assert result.exit_code == 0, result.output
    (run,) = runs(module_store, "train")
    return module_store, run, result.output


@pytest.mark.slow  # the module's budgeted train run: `make test`, not the edit-run loop
def test_budgeted_run_logs_its_plan_and_ends_at_the_schedules_end(budgeted):
    uri, run, output = budgeted
    metrics, tags = run.data.metrics, run.data.tags
    planned, actual = metrics["budget_planned_epochs"], metrics["budget_actual_epochs"]
    assert planned >= 1 and metrics["budget_images_per_second"] > 0
    assert f"aigc: budget {BUDGET:g} min: " in output and "images/s" in output  # the plan, as it is made
    assert actual == planned and tags["aigc.budget_stopped_by_budget"] == "false"
    assert 0.9 * BUDGET * 60 <= metrics["budget_seconds_used"] <= BUDGET * 60  # filled (on the fake clock)
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "epoch/learning_rate")
    assert len(history) == math.ceil(actual)  # a partial last epoch (the plan fills the budget) logs its point too
    rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert rates[-1] < 1e-3 * 0.002  # the last epoch ends where the cosine does (peak 0.002)
    assert "final_accuracy" in metrics and tags["aigc.model_uri"].startswith("models:/")
    assert run.data.params["train.budget_minutes"] == str(BUDGET)


@pytest.mark.slow  # the module's budgeted train run: `make test`, not the edit-run loop
def test_ema_is_kept_only_where_it_scores_better_than_the_raw_weights(budgeted):
    """train.ema=0.9: the run compared the averaged best epoch with the last raw weights and kept the better."""
    _, run, _ = budgeted
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


# --- the plan, on a fake clock: what a machine's pace does to it, without waiting for one ---------------


def test_the_plan_fills_the_budget_with_whole_epochs_then_a_partial_one():
    from aigc.training.budget import Pace, plan_epochs

    pace = [Pace(train=8.0, fixed=2.0)]  # 10 s an epoch, 2 of them validation and checkpoints; 1 s kept free
    assert plan_epochs(0.0, pace, budget=101.0, max_epochs=50) == 10.0
    assert plan_epochs(0.0, pace, budget=106.0, max_epochs=50) == pytest.approx(10.375)  # 3 s of batches + 2 fixed
    assert plan_epochs(0.0, pace, budget=103.5, max_epochs=50) == 10.0  # 0.5 s of batches: not worth a validation
    assert plan_epochs(0.0, pace, budget=101.0, max_epochs=6) == 6.0
    assert plan_epochs(99.0, pace, budget=100.0, max_epochs=50, done=9.0) == 9.0  # never less than what ran
    slower, faster = pace * 2 + [Pace(16.0, 2.0)] * 2, pace * 2 + [Pace(4.0, 2.0)] * 2  # the median of 3
    assert plan_epochs(40.0, slower, 100.0, 50, done=4.0) == pytest.approx(4 + 3 + (60 - 1.8 - 54 - 2) / 16)
    assert plan_epochs(40.0, faster, 100.0, 50, done=4.0) == pytest.approx(4 + 9 + (60 - 0.6 - 54 - 2) / 4)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Work(keras.callbacks.Callback):
    """Advances the fake clock as a machine would: `batch_seconds(epoch)` a training batch (plus `trace` on a
    process's first batch), TEST_SECONDS a validation batch, OVERHEAD between epochs."""

    TEST_SECONDS, OVERHEAD = 0.25, 0.3

    def __init__(self, clock, batch_seconds, trace=0.0, crash_after=None):
        super().__init__()
        self.clock, self.batch_seconds, self.trace, self.crash_after = clock, batch_seconds, trace, crash_after

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.clock.now = epoch, self.clock.now + self.OVERHEAD

    def on_train_batch_begin(self, batch, logs=None):
        self.clock.now += self.batch_seconds(self.epoch) + self.trace
        self.trace = 0.0

    def on_test_batch_begin(self, batch, logs=None):
        self.clock.now += self.TEST_SECONDS

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.crash_after:
            raise KeyboardInterrupt  # a kill after the plan was saved, before the resume backup of this epoch


def fake_fit(workdir, clock, batch_seconds, trace=0.0, crash_after=None, batches=4, resumable=False):
    """A real Keras fit of a tiny model (`batches` an epoch, 1 validation batch) under a 1-minute budget on the
    fake clock; `resumable`: with the resume backup as aigc's fit keeps it (an h5 file written each epoch: about
    1 s of these tests' 5.5 s, so only where a test resumes). Returns (plan.json, model, schedule, the
    schedule's ends in steps: as this process started, then after each epoch)."""
    import tensorflow as tf

    from aigc import config, training
    from aigc.training.budget import Plan

    cfg = config.load(None, "train.budget_minutes=1 train.epochs=500 train.schedule=onecycle").train
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(0, 1, (8 * batches, 4, 4, 3)).astype("float32"), rng.integers(0, 2, 8 * batches)
    data = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, 2))).batch(8)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    training.compile_model(model, cfg)
    schedule = training.planned_schedule(cfg)
    model.optimizer.learning_rate = schedule
    ends = []  # the schedule's end as this process starts, then after each epoch's plan
    seen = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: ends.append(int(schedule.total.numpy())),
                                          on_epoch_end=lambda epoch, logs: ends.append(int(schedule.total.numpy())))
    backup = [keras.callbacks.BackupAndRestore(str(workdir / "backup"), delete_checkpoint=False)] if resumable else []
    model.fit(data, validation_data=data.take(1), epochs=cfg.epochs, verbose=0,
              callbacks=[Plan(cfg, workdir, 8 * batches, batches, schedule, clock=clock), seen,
                         Work(clock, batch_seconds, trace, crash_after), *backup])
    return json.loads((workdir / training.PLAN).read_text()), model, schedule, ends


def assert_budget_filled_to_the_schedules_end(plan, model, schedule):
    """Within one epoch of the minute (>= 97% used, never over), the last step the schedule's end."""
    assert 0.97 * 60 <= plan["seconds_used"] <= 60 and not plan.get("stopped_by_budget")
    assert plan["actual_epochs"] == plan["planned_epochs"]
    assert int(model.optimizer.iterations.numpy()) == int(schedule.total.numpy())


def test_a_loaded_machine_is_replanned_down_and_up_and_still_fills_the_budget(tmp_path):
    """A loaded machine: every batch 0.6-1.4x its pace at random (others' bursts; seeded), the pace 0.4 s, then
    0.8 s (a neighbour's job, epochs 3-5), then 0.2 s (it ended). 10 batches an epoch, so that one step is a
    small share of the minute, as with a real epoch's hundreds of batches."""
    noise = np.random.default_rng(0)
    pace = {0: 0.4, 1: 0.4, 2: 0.4, 3: 0.8, 4: 0.8, 5: 0.8}
    plan, model, schedule, ends = fake_fit(tmp_path, FakeClock(), lambda epoch: pace.get(epoch, 0.2) *
                                           noise.uniform(0.6, 1.4), batches=10)
    assert_budget_filled_to_the_schedules_end(plan, model, schedule)
    lowest = ends.index(min(ends[1:]))
    assert ends[1] > ends[lowest] < ends[-1]  # shortened while slow, lengthened once fast again


def test_an_idle_machine_fills_the_budget_after_a_slow_first_epoch(tmp_path):
    """An idle machine, 1 s a batch, but 20 s of tracing in the first batch: the pace is measured after it,
    the plan still fills the minute."""
    plan, model, schedule, _ = fake_fit(tmp_path, FakeClock(), lambda epoch: 1.0, trace=20.0)
    assert_budget_filled_to_the_schedules_end(plan, model, schedule)
    assert plan["paces"][0][0] == pytest.approx(4.0)  # the first epoch's batches at the steady 1 s


def test_a_resumed_run_keeps_its_plan_and_spends_only_what_is_left(tmp_path):
    clock = FakeClock()
    with pytest.raises(KeyboardInterrupt):
        fake_fit(tmp_path, clock, lambda epoch: 1.0, trace=5.0, crash_after=4, resumable=True)
    before = json.loads((tmp_path / "plan.json").read_text())
    clock.now += 600  # the machine was down: that time is not the budget's
    plan, model, schedule, ends = fake_fit(tmp_path, clock, lambda epoch: 1.0, trace=5.0, resumable=True)
    assert ends[0] == round(before["planned_epochs"] * 4)  # the plan kept from the resumed process's first step
    assert_budget_filled_to_the_schedules_end(plan, model, schedule)
    assert len(plan["paces"]) > len(before["paces"])  # the paces of both processes


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
    ("train.ema_overwrite_frequency=5", ["train.ema_overwrite_frequency", "needs train.ema"]),
    ("augment.horizontal_flip=false augment.alternating_flip=true",
     ["augment.alternating_flip", "needs augment.horizontal_flip"]),
    ("train.bn_bias_lr_scale=0", ["train.bn_bias_lr_scale", "> 0"]),
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


def test_batchnorm_offsets_learn_at_the_scaled_rate():
    """One SGD step of gradient 1 at rate 0.1: kernels, biases and BatchNorm scales move 0.1, the offsets 0.8."""
    from aigc import config, training

    optimizer = training.make_optimizer(config.load(None, "train.optimizer=sgd train.momentum=0 "
                                                          "train.learning_rate=0.1 train.bn_bias_lr_scale=8").train)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    optimizer.apply_gradients([(np.ones(v.shape, "float32"), v) for v in model.trainable_variables])
    moved = {v.name: float(np.abs(v.numpy() - start).max()) for v, start in
             zip(model.trainable_variables, (0, 0, 1, 0)) if v.name in ("bias", "gamma", "beta")}
    assert moved == pytest.approx({"bias": 0.1, "gamma": 0.1, "beta": 0.8})


def test_lookahead_overwrites_the_weights_with_their_average():
    """train.ema_overwrite_frequency=2: every second step the weights become the moving average (EMA 0.5)."""
    from aigc import config, training

    train = config.load(None, "train.optimizer=sgd train.momentum=0 train.learning_rate=1 train.ema=0.5 "
                              "train.ema_overwrite_frequency=2").train
    weight = keras.Variable(np.zeros(1, "float32"))
    optimizer = training.make_optimizer(train)
    optimizer.apply_gradients([(-np.ones(1, "float32"), weight)])  # raw 1, average 1 (Keras' first copies)
    assert weight.numpy() == pytest.approx([1.0])
    optimizer.apply_gradients([(-np.ones(1, "float32"), weight)])  # raw 2, average 1.5: overwritten
    assert weight.numpy() == pytest.approx([1.5])


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
