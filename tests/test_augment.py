"""Tests for aigc.data.augment: IDG-faithful augmentation layers and CutMix / MixUp."""

from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from aigc.data.augment import batch_mixer, build_augmenter, idg_transforms

DEFAULTS = {
    "rotation": 0.0, "width_shift": 0.0, "height_shift": 0.0, "shear": 0.0, "zoom": 0.0,
    "brightness": None, "horizontal_flip": False, "vertical_flip": False,
    "channel_shift": 0.0, "cutmix": 0.0, "mixup": 0.0,
}


def make_aug(**changes):
    """Stand-in for the project's frozen augmentation dataclass (same field names)."""
    unknown = set(changes) - set(DEFAULTS)
    assert not unknown, unknown
    return SimpleNamespace(**{**DEFAULTS, **changes})


ALL_ON = {
    "rotation": 30.0, "width_shift": 0.2, "height_shift": 0.1, "shear": 20.0, "zoom": 0.2,
    "brightness": (0.6, 1.4), "horizontal_flip": True, "vertical_flip": True,
    "channel_shift": 40.0,
}


def random_images(n=8, size=32, seed=0, low=0.0, high=255.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(n, size, size, 3)).astype("float32")


def run(augmenter, images):
    return keras.ops.convert_to_numpy(augmenter(images, training=True))


# --- reference: tf.keras 2.x ImageDataGenerator.apply_affine_transform, re-derived ---


def idg_affine(img, theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0):
    """IDG's affine warp of one (H, W, C) square image: scipy, order=1, fill 'nearest'."""
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    m = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    m = m @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    m = m @ np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    m = m @ np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    h, w = img.shape[:2]
    ox, oy = h / 2 - 0.5, w / 2 - 0.5
    m = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]]) @ m @ np.array(
        [[1, 0, -ox], [0, 1, -oy], [0, 0, 1]]
    )
    # IDG builds the matrix in (x, y) and swaps it to numpy's (row, col) order.
    m[:, [0, 1]] = m[:, [1, 0]]
    m[[0, 1]] = m[[1, 0]]
    return np.stack(
        [
            ndimage.affine_transform(img[..., c], m[:2, :2], m[:2, 2], order=1, mode="nearest")
            for c in range(img.shape[-1])
        ],
        axis=-1,
    )


def test_every_option_on_keeps_shape_dtype_and_range():
    images = random_images(n=8, size=32)
    augmenter = build_augmenter(make_aug(**ALL_ON), seed=1)
    out = augmenter(images, training=True)
    assert tuple(out.shape) == images.shape
    assert out.dtype == "float32"
    out = keras.ops.convert_to_numpy(out)
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert not np.allclose(out, images)
    # Inference mode leaves images alone.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(augmenter(images, training=False)), images)


def test_nothing_switched_on_returns_none():
    assert build_augmenter(make_aug()) is None
    assert build_augmenter(make_aug(cutmix=1.0, mixup=0.2)) is None  # batch-level only


def test_horizontal_flip_mirrors_or_keeps_each_image():
    images = random_images(n=32, size=16)
    out = run(build_augmenter(make_aug(horizontal_flip=True), seed=3), images)
    kept = [np.allclose(o, i) for o, i in zip(out, images)]
    mirrored = [np.allclose(o, i[:, ::-1]) for o, i in zip(out, images)]
    assert all(k or m for k, m in zip(kept, mirrored))
    assert any(kept) and any(mirrored)


def test_both_flips_use_independent_coins():
    # IDG flips each axis on its own coin; Keras' "horizontal_and_vertical" does not.
    images = random_images(n=64, size=16)
    out = run(build_augmenter(make_aug(horizontal_flip=True, vertical_flip=True), seed=4), images)
    seen = set()
    for o, i in zip(out, images):
        for h in (False, True):
            for v in (False, True):
                ref = i[:, ::-1] if h else i
                ref = ref[::-1] if v else ref
                if np.allclose(o, ref):
                    seen.add((h, v))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_brightness_multiplies():
    lo, hi = 0.5, 1.5
    images = np.full((32, 16, 16, 3), 100.0, dtype="float32")
    out = run(build_augmenter(make_aug(brightness=(lo, hi)), seed=5), images)
    per_image = out.reshape(32, -1)
    assert np.allclose(per_image, per_image[:, :1], atol=1e-4)  # still a constant image
    assert per_image.min() >= 100 * lo - 1e-3 and per_image.max() <= 100 * hi + 1e-3
    assert per_image[:, 0].std() > 1.0  # a different factor per image
    bright = run(build_augmenter(make_aug(brightness=(2.0, 3.0))), np.full_like(images, 200.0))
    assert np.allclose(bright, 255.0)  # clipped like PIL's uint8 result


def test_channel_shift_stays_within_c_and_the_image_range():
    c = 20.0
    images = random_images(n=16, size=16, seed=6, low=30.0, high=220.0)
    out = run(build_augmenter(make_aug(channel_shift=c), seed=7), images)
    diff = out - images
    assert np.abs(diff).max() <= c + 1e-3
    assert np.abs(diff).max() > 1.0
    for o, i, d in zip(out, images, diff):
        assert o.min() >= i.min() - 1e-4 and o.max() <= i.max() + 1e-4
        free = (o > i.min() + 1e-3) & (o < i.max() - 1e-3)  # pixels that were not clipped
        assert np.ptp(d[free]) < 1e-3  # one offset for every channel and pixel


def test_large_rotation_changes_an_asymmetric_image():
    yy, xx = np.mgrid[0:32, 0:32]
    image = np.stack([xx * 8.0, yy * 4.0, (xx * yy) % 255.0], axis=-1).astype("float32")
    images = np.repeat(image[None], 8, axis=0)
    out = run(build_augmenter(make_aug(rotation=180.0), seed=8), images)
    assert all(np.abs(o - image).max() > 10.0 for o in out)
    assert out.min() >= 0.0 and out.max() <= 255.0


def test_same_seed_same_augmentation():
    images = random_images(n=4, size=16)
    a = run(build_augmenter(make_aug(**ALL_ON), seed=11), images)
    b = run(build_augmenter(make_aug(**ALL_ON), seed=11), images)
    np.testing.assert_allclose(a, b)


# --- each number means what it meant in ImageDataGenerator -------------------------


def pinned(n=1, **values):
    """IDG draws fixed to `values` (the rest at identity) for n images."""
    base = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0, "flip_h": 0.0, "flip_v": 0.0}
    return {k: np.full((n,), v, "float32") for k, v in {**base, **values}.items()}


def warp(image, draws):
    transforms = idg_transforms(draws, image.shape[0], image.shape[1])
    out = keras.ops.image.affine_transform(image[None], transforms, interpolation="bilinear", fill_mode="nearest")
    return keras.ops.convert_to_numpy(out)[0]


@pytest.mark.parametrize(
    "idg_kwargs",
    [
        {"theta": 25.0},
        {"zy": 0.8, "zx": 1.3},
        {"tx": 2.0, "ty": -4.0},
        {"shear": 20.0},
        {"shear": -35.0},
        # All four at once: one matrix R @ T @ S @ Z, resampled once, exactly as IDG did.
        {"theta": -17.0, "tx": 1.5, "ty": 2.5, "shear": -12.0, "zx": 0.9, "zy": 1.15},
    ],
)
@pytest.mark.parametrize("flip_h, flip_v", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_one_matrix_matches_idg_numbers_then_flips(idg_kwargs, flip_h, flip_v):
    image = random_images(n=1, size=16, seed=12)[0]
    expected = idg_affine(image, **idg_kwargs)
    expected = expected[:, ::-1] if flip_h else expected  # IDG flips after the affine warp
    expected = expected[::-1] if flip_v else expected
    out = warp(image, pinned(**idg_kwargs, flip_h=flip_h, flip_v=flip_v))
    np.testing.assert_allclose(out, expected, atol=1e-2)


def test_transforms_are_centred_on_non_square_images():
    # A 180 degree turn about the true centre is an exact double mirror, whatever the shape.
    image = random_images(n=1, size=16, seed=15)[0][:10]
    np.testing.assert_allclose(warp(image, pinned(theta=180.0)), image[::-1, ::-1], atol=1e-3)
    np.testing.assert_allclose(warp(image, pinned(flip_h=1.0)), image[:, ::-1], atol=1e-4)


def test_draws_cover_idg_ranges():
    aug = make_aug(rotation=30.0, width_shift=0.2, height_shift=0.1, shear=20.0, zoom=0.25,
                   horizontal_flip=True)
    layer = build_augmenter(aug, seed=16)
    draws = {k: keras.ops.convert_to_numpy(v) for k, v in layer.draws(4000, 40, 50).items()}
    for name, low, high in [("theta", -30, 30), ("tx", -0.2 * 50, 0.2 * 50), ("ty", -0.1 * 40, 0.1 * 40),
                            ("shear", -20, 20), ("zx", 0.75, 1.25), ("zy", 0.75, 1.25)]:
        values = draws[name]
        assert low <= values.min() < low + 0.05 * (high - low), name  # uniform over the whole range
        assert high - 0.05 * (high - low) < values.max() <= high, name
    assert abs(np.corrcoef(draws["zx"], draws["zy"])[0, 1]) < 0.1  # independent axes, as IDG draws them
    assert 0.45 < draws["flip_h"].mean() < 0.55 and not draws["flip_v"].any()


def test_layer_round_trips_through_its_config():
    layer = build_augmenter(make_aug(**ALL_ON), seed=17)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert (clone.rotation, clone.brightness, clone.vertical_flip) == (30.0, (0.6, 1.4), True)


def test_shear_layer_is_random_and_bounded():
    yy, xx = np.mgrid[0:16, 0:16]
    image = np.stack([xx * 16.0, yy * 16.0, xx * 0.0], axis=-1).astype("float32")
    out = run(build_augmenter(make_aug(shear=30.0), seed=14), np.repeat(image[None], 8, 0))
    assert len({o.tobytes() for o in out}) == 8  # one angle per image
    assert out.min() >= 0.0 and out.max() <= 255.0
    # A horizontal shear keeps the centre rows (almost) in place.
    np.testing.assert_allclose(out[:, 7:9, :, 0], np.broadcast_to(image[7:9, :, 0], (8, 2, 16)),
                               atol=8.0 * 16 * np.sin(np.deg2rad(30)) + 1)


# --- CutMix / MixUp --------------------------------------------------------------


def constant_batch(n=8, size=16):
    """Image i is constant 10 * (i + 1), label i is one-hot class i: mixing is checkable."""
    values = 10.0 * np.arange(1, n + 1, dtype="float32")
    images = np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).copy()
    return values, images, np.eye(n, dtype="float32")


def test_no_mixer_when_both_alphas_are_zero():
    assert batch_mixer(make_aug()) is None


@pytest.mark.parametrize(
    "changes", [{"cutmix": 1.0}, {"mixup": 0.4}, {"cutmix": 1.0, "mixup": 1.0}]
)
def test_mix_keeps_shapes_and_label_mass(changes):
    values, images, labels = constant_batch()
    out_images, out_labels = batch_mixer(make_aug(**changes), seed=21)(images, labels)
    out_images, out_labels = np.asarray(out_images), np.asarray(out_labels)
    assert out_images.shape == images.shape and out_images.dtype == np.float32
    assert out_labels.shape == labels.shape
    np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, atol=1e-5)
    assert (out_labels >= -1e-6).all() and out_images.min() >= 0 and out_images.max() <= 255
    # Labels weigh each source image exactly as much as it contributes to the pixels.
    # Labels weigh each source image about as much as it contributes to the pixels (CutMix: within a row
    # and a column of its box, see batch_mixer).
    np.testing.assert_allclose(out_images.mean(axis=(1, 2, 3)), out_labels @ values, atol=values.max() * 2 / 16)
    assert not np.allclose(out_labels, labels)


def test_cutmix_pastes_whole_pixels_and_weights_labels_by_area():
    values, images, labels = constant_batch(n=16)
    out_images, out_labels = batch_mixer(make_aug(cutmix=1.0), seed=22)(images, labels)
    pixels = np.asarray(out_images)[..., 0].reshape(16, -1)
    assert set(np.unique(pixels)) <= set(values)  # whole pixels pasted, never blended
    for row, label in zip(pixels, np.asarray(out_labels)):
        fractions = np.array([(row == v).mean() for v in values])
        np.testing.assert_allclose(fractions, label, atol=2 / 16)  # a 16x16 box: within a row and a column
    assert (np.asarray(out_labels).max(axis=1) < 1).any()  # some boxes pasted


# --- inside tf.data, as the training pipeline uses it ------------------------------


def test_works_inside_tf_data_map_on_batches():
    aug = make_aug(**ALL_ON, cutmix=1.0, mixup=0.2)
    augmenter = build_augmenter(aug, seed=31)
    mix = batch_mixer(aug, seed=33)
    images = random_images(n=20, size=16, seed=32)
    labels = np.eye(4, dtype="float32")[np.arange(20) % 4]
    ds = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .batch(8)
        .map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        .map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    )
    assert ds.element_spec[0].shape.as_list() == [None, 16, 16, 3]
    assert ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].shape.as_list() == [None, 4]
    batches = list(ds.as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [8, 8, 4]
    for x, y in batches:
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 255.0
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    # Fresh randomness for every batch and epoch (the map function is traced only once).
    again = list(ds.as_numpy_iterator())
    assert not np.allclose(batches[0][0], again[0][0])


# --- colour jitter and the alternating flip ----------------------------------------------------------


def test_colour_jitter_changes_contrast_and_saturation_within_range():
    images = random_images(n=16, size=8, seed=40)
    out = run(build_augmenter(SimpleNamespace(**DEFAULTS, color_jitter=0.3), seed=41), images)
    assert out.min() >= 0.0 and out.max() <= 255.0  # Keras' saturation on 0..255 went negative: see color_jitter
    assert np.abs(out - images).mean() > 1.0
    grey = np.full((4, 8, 8, 3), 120.0, "float32")
    np.testing.assert_allclose(run(build_augmenter(SimpleNamespace(**DEFAULTS, color_jitter=0.3)), grey), grey,
                               atol=0.5)  # no hue shift: a grey image has no contrast or saturation to change


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    from aigc import config
    from aigc.data.pipeline import train_dataset

    cfg = config.load(None, "augment.horizontal_flip=true augment.alternating_flip=true data.batch_size=8")
    images = random_images(n=16, size=8, seed=42).astype("uint8")
    dataset = train_dataset(images, np.zeros(16, int), 2, cfg.data, cfg.augment, seed=43)
    epochs = []
    for _ in range(3):
        seen = np.concatenate([x for x, _ in dataset.as_numpy_iterator()])
        mirrored = [any(np.array_equal(s, image[:, ::-1]) for s in seen) for image in images.astype("float32")]
        assert sum(mirrored) + sum(any(np.array_equal(s, image) for s in seen) for image in images) == 16
        epochs.append(np.array(mirrored))
    assert 0 < epochs[0].sum() < 16  # the first epoch by a coin per image
    np.testing.assert_array_equal(epochs[1], ~epochs[0])  # then each image the other way, every epoch
    np.testing.assert_array_equal(epochs[2], epochs[0])
    assert build_augmenter(cfg.augment) is None  # no coin on top of it: nothing else is on here
