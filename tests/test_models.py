"""The model zoo builds the seed architectures with exactly the seed's parameter counts."""

import keras
import keras_tuner
import numpy as np
import pytest

from aigc.errors import UserError
from aigc.models import MODELS, build_model, resnet, tunable_cnn

GIC = (64, 64, 3)
DEEPFAKE = (128, 128, 3)

# The deepfake report's attempts as `model.params` (attempt 3 was a majority vote, not a model).
BRANCH_ATTEMPT_1 = {
    "conv_blocks": [
        {"filters": 32, "kernel_size": 3, "padding": "valid", "pool": True},
        {"filters": 64, "kernel_size": 3, "padding": "valid", "pool": True},
        {"filters": 128, "kernel_size": 3, "padding": "valid", "pool": True},
    ],
    "branch": None,
    "dense": [{"units": 256}],
    "l2": 0,
}
BRANCH_ATTEMPT_2 = {
    "conv_blocks": [
        {"filters": 32, "kernel_size": 3, "pool": True, "dropout": 0.1},
        {"filters": 64, "kernel_size": 5, "pool": True, "dropout": 0.2},
        {"filters": 128, "kernel_size": 3, "pool": True, "dropout": 0.3},
    ],
    "branch": None,
    "dense": [{"units": 128, "dropout": 0.4}, {"units": 64, "dropout": 0.1}],
    "l2": 0,
}
BRANCH_ATTEMPT_4 = {
    **BRANCH_ATTEMPT_2,
    "branch": {"filters": 16, "kernel_size": 5, "pool_size": 16},
    "dense": [{"units": 256, "dropout": 0.4}, {"units": 128, "dropout": 0.1}],
}
BRANCH_ATTEMPT_5 = {
    "conv_blocks": [
        {"filters": 48, "kernel_size": 3, "pool": False, "dropout": 0.1},
        {"filters": 96, "kernel_size": 5, "pool": True, "dropout": 0.1},
        {"filters": 192, "kernel_size": 3, "pool": True, "dropout": 0.15},
    ],
    "branch": {"filters": 32, "kernel_size": 5, "pool_size": 16},
    "dense": [
        {"units": 420, "dropout": 0.3},
        {"units": 256, "dropout": 0.15},
        {"units": 64, "dropout": 0.15},
    ],
    "l2": 1e-5,
}
BRANCH_FINAL = {
    "conv_blocks": [
        {"filters": 32, "kernel_size": 3, "pool": False, "dropout": 0.1},
        {"filters": 70, "kernel_size": 5, "pool": True, "dropout": 0.1},
        {"filters": 160, "kernel_size": 3, "pool": True, "dropout": 0.15},
    ],
    "branch": {"filters": 48, "kernel_size": 5, "pool_size": 16},
    "dense": [
        {"units": 420, "dropout": 0.3},
        {"units": 256, "dropout": 0.15},
        {"units": 64, "dropout": 0.15},
    ],
    "l2": 1e-5,
}

SEED_BEST_TRIAL_SPACE = {
    "filters_1": [128],
    "filters_2": [128],
    "filters_3": [512],
    "kernel_1": [3],
    "kernel_2": [3],
    "kernel_3": [3],
    "padding": ["same"],
    "strides_1": [2],
    "strides_2": [2],
    "strides_3": [1],
    "dropout_1": [0.0],
    "dropout_2": [0.1],
    "dropout_3": [0.1],
    "global_pooling": ["avg"],
    "extra_dense": [False],
    "dense_final": [128],
    "dropout_final": [0.3],
}


@pytest.mark.parametrize(
    "name, input_shape, num_classes, params, expected",
    [
        ("resnet", GIC, 100, {}, 280_676),
        ("cnn", GIC, 100, {}, 3_627_748),
        ("lstm", GIC, 100, {}, 5_436_004),
        ("branch_cnn", DEEPFAKE, 5, BRANCH_ATTEMPT_1, 6_517_317),
        ("branch_cnn", DEEPFAKE, 5, {}, 70_389_583),
        ("branch_cnn", DEEPFAKE, 5, BRANCH_FINAL, 70_389_583),
    ],
    ids=[
        "resnet20",
        "cnn",
        "lstm",
        "branch_attempt_1",
        "branch_final_defaults",
        "branch_final_explicit",
    ],
)
def test_seed_parameter_counts(name, input_shape, num_classes, params, expected):
    model = build_model(name, input_shape, num_classes, params)
    assert model.count_params() == expected


@pytest.mark.parametrize(
    "params", [BRANCH_ATTEMPT_2, BRANCH_ATTEMPT_4], ids=["attempt_2", "attempt_4"]
)
def test_other_branch_attempts_build(params):
    model = build_model("branch_cnn", DEEPFAKE, 5, params)
    assert model.output.shape == (None, 5)


def test_resnet_depth():
    assert resnet.build(GIC, 100, depth=32).name == "resnet32"
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet.build(GIC, 100, depth=21)
    with pytest.raises(UserError, match="model.params.depth"):
        build_model("resnet", GIC, 100, {"depth": 21})


def test_models_start_by_rescaling_raw_pixels():
    for name, builder in MODELS.items():
        model = builder(DEEPFAKE if name == "branch_cnn" else GIC, 5)
        assert isinstance(model.layers[1], keras.layers.Rescaling), name


def test_tunable_cnn_default_is_the_seed_best_trial():
    model = tunable_cnn.build(GIC, 100)
    hp = keras_tuner.HyperParameters()
    same = tunable_cnn.build_from_hp(hp, GIC, 100, space=SEED_BEST_TRIAL_SPACE)
    assert same.count_params() == model.count_params()


def test_tunable_cnn_build_from_hp_declares_the_seed_space():
    hp = keras_tuner.HyperParameters()
    tunable_cnn.build_from_hp(hp, GIC, 100)
    assert {p.name for p in hp.space} == set(tunable_cnn.SEARCH_SPACE)
    assert "extra_dense_units" not in hp.values  # inactive while extra_dense is off
    assert hp.get("filters_3") == 64  # a Choice defaults to its first value
    assert [p.values for p in hp.space if p.name == "filters_3"] == [
        [64, 128, 256, 512]
    ]


def test_tunable_cnn_space_overrides():
    hp = keras_tuner.HyperParameters()
    space = {
        "filters_1": [16, 32],
        "dropout_1": {"min": 0, "max": 0.3, "step": 0.1},
        "dropout_final": [0, 0.3, 0.5],  # YAML mixes ints and floats
        "extra_dense": [True],
    }
    model = tunable_cnn.build_from_hp(hp, GIC, 10, space=space)
    assert hp.get("filters_1") == 16
    assert model.get_layer("extra_dense").units == 128
    with pytest.raises(ValueError, match="filter_1"):
        tunable_cnn.build_from_hp(
            keras_tuner.HyperParameters(), GIC, 10, space={"filter_1": [16]}
        )


def test_unknown_model_name():
    with pytest.raises(UserError, match="model.name") as error:
        build_model("resnet50", GIC, 100, {})
    assert "branch_cnn" in str(error.value)


def test_unknown_model_param():
    with pytest.raises(UserError, match="model.params.filter") as error:
        build_model("cnn", GIC, 100, {"filter": [32, 64, 64]})
    assert "dropout_rates" in str(error.value)


def test_unknown_key_in_a_branch_block():
    with pytest.raises(UserError, match=r"model.params.conv_blocks\[0\].*kernel"):
        build_model(
            "branch_cnn", DEEPFAKE, 5, {"conv_blocks": [{"filters": 8, "kernel": 3}]}
        )


def test_model_too_big_for_the_image():
    with pytest.raises(UserError, match="does not fit image size 16x16") as error:
        build_model(
            "branch_cnn", (16, 16, 3), 5, {"branch": {"filters": 8, "pool_size": 32}}
        )
    assert "data.image_size" in str(error.value)


def test_forward_pass_gives_probabilities():
    model = build_model("resnet", (32, 32, 3), 10, {})
    pixels = (
        np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    )
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "name, params",
    [
        ("resnet", {"depth": 8}),
        ("cnn", {"filters": [8, 8, 8]}),
        ("lstm", {"units": [8]}),
        ("branch_cnn", BRANCH_ATTEMPT_1),
        ("tunable_cnn", {}),
    ],
)
def test_mixed_precision_softmax_is_float32(name, params):
    """Logits in float16, then the softmax itself in float32: probabilities that sum to 1 in float32."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        shape = DEEPFAKE if name == "branch_cnn" else (32, 32, 3)
        model = build_model(name, shape, 100, params)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    final, logits = model.layers[-1], model.layers[-2]
    assert final.name == "probabilities" and final.compute_dtype == "float32"
    assert final.activation is keras.activations.softmax and final.count_params() == 0
    assert logits.compute_dtype == "float16"
    pixels = np.random.default_rng(0).uniform(0, 255, size=(4, *shape)).astype("float32")
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1, dtype=np.float32), 1.0, atol=1e-6)


# --- the fast ResNet's small-image tricks ---------------------------------------------------------------

TRICKS = {"width": 4, "whiten": True, "dirac": True, "bn_scale": False, "bn_momentum": 0.4}


def correlated_images(n=64, size=16, seed=0):
    """Smooth colour images with some noise: neighbouring pixels and channels correlate, as in photos."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (n, size // 4, size // 4, 1)).repeat(4, axis=1).repeat(4, axis=2)
    tint = rng.uniform(0.5, 1.0, (n, 1, 1, 3))
    return np.clip(base * tint + rng.normal(0, 8, (n, size, size, 3)), 0, 255).astype("uint8")


def test_patch_whitening_decorrelates_the_training_patches():
    from aigc.models.whitening import CHANNELS, fit_whitening

    images = correlated_images()
    model = build_model("fast_resnet", (16, 16, 3), 3, {"width": 4, "whiten": True})
    assert fit_whitening(model, images)
    whiten = model.get_layer("whiten")
    assert not whiten.trainable and whiten.kernel.shape == (2, 2, 3, CHANNELS)
    after_rescale = keras.Model(model.inputs, whiten.output)
    out = keras.ops.convert_to_numpy(after_rescale(images.astype("float32"))).reshape(-1, CHANNELS)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(CHANNELS), atol=0.05)  # every direction at 1
    assert not fit_whitening(build_model("fast_resnet", (16, 16, 3), 3, {"width": 4}), images)  # none to fit


def test_dirac_init_passes_the_first_channels_through():
    model = build_model("fast_resnet", (16, 16, 3), 3, TRICKS)
    conv = model.get_layer("layer1_res1_conv")  # 8 -> 8 channels: an identity at the start
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 8)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(conv(x)), x, atol=1e-6)
    widening = model.get_layer("layer1_conv")  # 4 -> 8: the first 4 pass through, the other 4 start random
    y = keras.ops.convert_to_numpy(widening(x[..., :4]))
    np.testing.assert_allclose(y[..., :4], x[..., :4], atol=1e-6)
    assert np.abs(y[..., 4:]).mean() > 0.1


def test_batchnorm_without_scale_and_with_fast_statistics():
    model = build_model("fast_resnet", (16, 16, 3), 3, TRICKS)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(not norm.scale and norm.momentum == 0.4 for norm in norms)
    assert not any(weight.name == "gamma" for weight in model.weights)
    with pytest.raises(UserError, match="model.params.bn_momentum"):
        build_model("fast_resnet", (16, 16, 3), 3, {"bn_momentum": 1.0})


def test_a_model_trained_with_every_trick_loads_in_keras_safe_mode(tmp_path):
    """Whitening, Dirac, BatchNorm, faster offsets, lookahead: the saved model loads with safe_mode=True,
    compiled (aigc's optimizer is registered) and bare, and predicts the same."""
    from aigc import config, training
    from aigc.models.whitening import fit_whitening

    images = correlated_images(n=32)
    labels = keras.utils.to_categorical(np.arange(32) % 3, 3)
    model = build_model("fast_resnet", (16, 16, 3), 3, TRICKS)
    fit_whitening(model, images)
    train = config.load(None, "train.optimizer=adamw train.weight_decay=0.01 train.bn_bias_lr_scale=8 "
                              "train.ema=0.9 train.ema_overwrite_frequency=2").train
    training.compile_model(model, train)
    whitened = keras.ops.convert_to_numpy(model.get_layer("whiten").kernel).copy()
    model.fit(images.astype("float32"), labels, epochs=1, batch_size=8, verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("whiten").kernel), whitened)  # frozen
    path = tmp_path / "model.keras"
    model.save(path)
    expected = model.predict(images[:4].astype("float32"), verbose=0)
    for compile in (True, False):
        loaded = keras.saving.load_model(path, safe_mode=True, compile=compile)
        np.testing.assert_allclose(loaded.predict(images[:4].astype("float32"), verbose=0), expected, atol=1e-5)
        if compile:
            assert isinstance(loaded.optimizer, training.optimizer.AdamW) and loaded.optimizer.bn_bias_lr_scale == 8


def test_a_new_model_per_fold_or_trial_prints_no_retracing_warning():
    """TensorFlow counts traces per Python function, across models: after five new models have each traced
    their predict function once (a cv's folds, a tuner's trials), it warns of "retracing" on the terminal."""
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    tensorflow_logger = logging.getLogger("tensorflow")
    tensorflow_logger.addHandler(handler)  # behind the logger's filters, as TF's own stderr handler is
    try:
        for _ in range(6):
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
            model.predict(np.zeros((2, 4)), verbose=0)
    finally:
        tensorflow_logger.removeHandler(handler)
    assert not [message for message in seen if "retracing" in message]
