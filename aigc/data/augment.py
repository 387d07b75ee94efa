"""Data augmentation: Keras 2 `ImageDataGenerator` options rebuilt as one Keras 3 layer.

Every number keeps the meaning it had in `ImageDataGenerator` (IDG), so an old
Kaggle solution's settings can be copied over unchanged:

==================  ==========================================================
option              IDG meaning (one independent draw per image)
==================  ==========================================================
rotation r          angle ~ U(-r, r) degrees
width_shift f       shift ~ U(-f, f) * width  (f < 1)
height_shift f      shift ~ U(-f, f) * height (f < 1)
shear s             shear ANGLE ~ U(-s, s) degrees
zoom z              zx, zy ~ U(1-z, 1+z) independently
channel_shift c     + U(-c, c) to all channels, clipped to the image's own min/max
horizontal_flip     mirror left-right with p = 0.5
vertical_flip       mirror up-down with p = 0.5 (its own coin)
brightness (lo,hi)  pixels * U(lo, hi), clipped to 0..255
==================  ==========================================================

IDG applies them in that order, with its defaults: bilinear interpolation (scipy
order=1) and fill_mode="nearest". Like IDG, `IDGAugmentation` composes rotation,
shift, shear and zoom into ONE matrix ``R @ T @ S @ Z`` and resamples each image
once. It also folds the flips into that matrix: a mirror maps pixel centres onto
pixel centres, so it is exact, and it commutes with the channel shift (whose clip
range is the whole image's). Chaining Keras' RandomRotation, RandomTranslation,
RandomZoom and RandomFlip instead would resample four times and blur the image
three more times than IDG did; one resample is also what makes this pipeline
several times faster than IDG (see benchmarks/input_pipeline.py).

Two documented IDG quirks are deliberately NOT reproduced: tf.keras 2.x swapped the
axes of width/height_shift_range (keras-team/keras#17398), and it centred its affine
matrix with the wrong axis on non-square images. Here width_shift moves along the
width and every transform is centred on the image centre, as IDG's docs promise.

CutMix / MixUp (`batch_mixer`) and the colour jitter are Keras' own layers. The alternating flip
(`augment.alternating_flip`) is no random draw: aigc.data.pipeline mirrors each image on alternate
epochs as it reads the batch, and the random horizontal flip here is then off.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops


__all__ = ["IDGAugmentation", "batch_mixer", "build_augmenter", "idg_transforms"]

# IDG's defaults: scipy.ndimage order=1 (bilinear) and fill_mode="nearest".
_INTERPOLATION = "bilinear"
_FILL_MODE = "nearest"
GEOMETRY = ("rotation", "width_shift", "height_shift", "shear", "zoom")


def _matrices(rows):
    """(N, 3, 3) from a list of 3 rows, each a list of 3 (N,) tensors."""
    return ops.stack([ops.stack(row, axis=-1) for row in rows], axis=-2)


def idg_transforms(draws, height, width):
    """(N, 8) projective transforms of IDG's ``R @ T @ S @ Z`` plus flips, centred on the image.

    `draws` maps theta and shear (degrees), tx and ty (pixels), zx and zy (scale) and
    flip_h and flip_v (0 or 1) to (N,) float32 tensors. Each transform maps an OUTPUT
    pixel (x = column, y = row) to the input pixel it samples, as `affine_transform` wants.
    """
    theta = draws["theta"] * (math.pi / 180.0)
    shear = draws["shear"] * (math.pi / 180.0)
    zero, one = ops.zeros_like(theta), ops.ones_like(theta)
    rotate = _matrices([[ops.cos(theta), -ops.sin(theta), zero],
                        [ops.sin(theta), ops.cos(theta), zero], [zero, zero, one]])
    shift = _matrices([[one, zero, draws["tx"]], [zero, one, draws["ty"]], [zero, zero, one]])
    sheared = _matrices([[one, -ops.sin(shear), zero], [zero, ops.cos(shear), zero], [zero, zero, one]])
    # A mirror is a -1 scale about the centre, so it joins the zoom matrix.
    scale_x = draws["zx"] * (1.0 - 2.0 * draws["flip_h"])
    scale_y = draws["zy"] * (1.0 - 2.0 * draws["flip_v"])
    zoom = _matrices([[scale_x, zero, zero], [zero, scale_y, zero], [zero, zero, one]])
    matrix = rotate @ shift @ sheared @ zoom
    # Centre it: x_in = c + M (x_out - c), with c the image centre in pixel coordinates.
    cx = (ops.cast(width, "float32") - 1.0) / 2.0
    cy = (ops.cast(height, "float32") - 1.0) / 2.0
    offset_x = cx - matrix[:, 0, 0] * cx - matrix[:, 0, 1] * cy + matrix[:, 0, 2]
    offset_y = cy - matrix[:, 1, 0] * cx - matrix[:, 1, 1] * cy + matrix[:, 1, 2]
    return ops.stack([matrix[:, 0, 0], matrix[:, 0, 1], offset_x,
                      matrix[:, 1, 0], matrix[:, 1, 1], offset_y, zero, zero], axis=-1)


@keras.saving.register_keras_serializable(package="aigc")
class IDGAugmentation(keras.layers.Layer):
    """ImageDataGenerator's random transforms in one layer; identity when not training."""

    def __init__(self, rotation=0.0, width_shift=0.0, height_shift=0.0, shear=0.0, zoom=0.0,
                 channel_shift=0.0, brightness=None, horizontal_flip=False, vertical_flip=False,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.width_shift, self.height_shift = float(rotation), float(width_shift), float(height_shift)
        self.shear, self.zoom, self.channel_shift = float(shear), float(zoom), float(channel_shift)
        self.brightness = None if brightness is None else tuple(float(v) for v in brightness)
        self.horizontal_flip, self.vertical_flip = bool(horizontal_flip), bool(vertical_flip)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        # TensorFlow's image transform op has no XLA kernel: Keras then compiles the model without XLA.
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def draws(self, n, height, width):
        """One random draw of every IDG parameter per image: {name: (n,) float32}."""
        u = keras.random.uniform((n, 8), seed=self.generator)

        def spread(i, half):  # column i of u as U(-half, half)
            return (2.0 * u[:, i] - 1.0) * half

        return {
            "theta": spread(0, self.rotation),
            "tx": spread(1, self.width_shift * ops.cast(width, "float32")),
            "ty": spread(2, self.height_shift * ops.cast(height, "float32")),
            "shear": spread(3, self.shear),
            "zx": 1.0 + spread(4, self.zoom),
            "zy": 1.0 + spread(5, self.zoom),
            "flip_h": ops.cast(u[:, 6] < 0.5, "float32") if self.horizontal_flip else ops.zeros_like(u[:, 6]),
            "flip_v": ops.cast(u[:, 7] < 0.5, "float32") if self.vertical_flip else ops.zeros_like(u[:, 7]),
        }

    def call(self, images, training=True):
        if not training:
            return images
        images = ops.cast(images, self.compute_dtype)  # float16 under mixed precision
        unbatched = len(images.shape) == 3
        if unbatched:  # one transform row per image
            images = ops.expand_dims(images, 0)
        shape = ops.shape(images)
        draws = self.draws(shape[0], shape[1], shape[2])
        if any(getattr(self, name) for name in GEOMETRY):
            images = ops.image.affine_transform(images, idg_transforms(draws, shape[1], shape[2]),
                                                interpolation=_INTERPOLATION, fill_mode=_FILL_MODE)
        else:  # flips alone: no resample needed
            images = self._flip(images, draws["flip_h"], axis=2)
            images = self._flip(images, draws["flip_v"], axis=1)
        if self.channel_shift:
            images = self._shift_channels(images)
        if self.brightness is not None:
            factor = keras.random.uniform((shape[0], 1, 1, 1), *self.brightness, seed=self.generator,
                                          dtype=images.dtype)
            # IDG went through PIL's ImageEnhance.Brightness on uint8, hence the 0..255 clip.
            images = ops.clip(images * factor, 0.0, 255.0)
        return ops.squeeze(images, 0) if unbatched else images

    @staticmethod
    def _flip(images, flags, axis):
        mirrored = ops.reshape(flags > 0.5, (-1, 1, 1, 1))
        return ops.where(mirrored, ops.flip(images, axis=axis), images)

    def _shift_channels(self, images):
        shift = keras.random.uniform((ops.shape(images)[0], 1, 1, 1), -self.channel_shift, self.channel_shift,
                                     seed=self.generator, dtype=images.dtype)
        # IDG draws ONE intensity per image (not per channel) and clips every channel to
        # the min/max taken over the whole image, so the value range never grows.
        lo = ops.min(images, axis=(1, 2, 3), keepdims=True)
        hi = ops.max(images, axis=(1, 2, 3), keepdims=True)
        return ops.minimum(ops.maximum(images + shift, lo), hi)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "width_shift": self.width_shift,
                "height_shift": self.height_shift, "shear": self.shear, "zoom": self.zoom,
                "channel_shift": self.channel_shift, "brightness": self.brightness,
                "horizontal_flip": self.horizontal_flip, "vertical_flip": self.vertical_flip, "seed": self.seed}


def color_jitter(jitter: float, seed=None) -> keras.Sequential:
    """Keras' RandomColorJitter: contrast and saturation each times a factor in [1 - jitter, 1 + jitter].

    Keras takes saturation as f with multiplier f / (1 - f), hence the bounds. It runs on pixels scaled to
    [0, 1]: in Keras 3.15 RandomSaturation clips the saturation to value_range, so with (0, 255) a saturation
    past 1 turns into negative pixels.
    """
    return keras.Sequential([
        keras.layers.Rescaling(1 / 255),
        keras.layers.RandomColorJitter(value_range=(0, 1), contrast_factor=jitter,
                                       saturation_factor=((1 - jitter) / (2 - jitter), (1 + jitter) / (2 + jitter)),
                                       seed=seed),
        keras.layers.Rescaling(255),
    ], name="color_jitter")


def build_augmenter(aug, seed=None):
    """The augmentation layers for one config (aigc.config.AugmentConfig checks the ranges); None when all off.

    `aug`: any object with AugmentConfig's fields (the newer ones may be missing).
    """
    numbers = {name: float(getattr(aug, name)) for name in (*GEOMETRY, "channel_shift")}
    brightness = None if aug.brightness is None else tuple(float(v) for v in aug.brightness)
    # alternating: the pipeline mirrors each image on alternate epochs, no coin here
    flips = {"horizontal_flip": bool(aug.horizontal_flip) and not getattr(aug, "alternating_flip", False),
             "vertical_flip": bool(aug.vertical_flip)}
    stages = []
    if any(numbers.values()) or brightness is not None or any(flips.values()):
        stages.append(IDGAugmentation(**numbers, **flips, brightness=brightness, seed=seed, name="augmenter"))
    jitter = getattr(aug, "color_jitter", 0.0)
    if jitter:
        stages.append(color_jitter(jitter, seed))
    chance = getattr(aug, "random_erasing", 0.0)
    if chance:
        # Zhong et al.'s random erasing (Keras' layer): a box of 2-33% of the image filled with noise, after
        # the geometry so the box never gets rotated off the image
        stages.append(keras.layers.RandomErasing(factor=(chance, chance), value_range=(0, 255),
                                                 seed=seed, name="random_erasing"))
    if len(stages) <= 1:
        return stages[0] if stages else None
    return keras.Sequential(stages, name="augmenter")


def batch_mixer(aug, seed=None):
    """CutMix / MixUp of a batch of (images, one-hot labels), Keras' own layers; None when both alphas are 0.

    CutMix(factor=(a, a)) draws its box area from Beta(a, a), as the paper does (a single `factor` would
    draw a itself at random). It weighs the labels by the box's real-valued area while it pastes whole
    pixels, so a label is off from the pasted share by at most one row and one column of the image.
    Both on: one of the two per batch, by a coin (timm's batch mode).
    """
    cutmix = keras.layers.CutMix(factor=(aug.cutmix, aug.cutmix), seed=seed) if aug.cutmix else None
    mixup = keras.layers.MixUp(alpha=aug.mixup, seed=seed) if aug.mixup else None
    if cutmix is None and mixup is None:
        return None

    def mix(images, labels):
        data = {"images": tf.cast(images, tf.float32), "labels": tf.cast(labels, tf.float32)}
        if cutmix is not None and mixup is not None:
            # an op-level seed on a stateful op: reproducible, yet a new coin for every batch
            mixed = tf.cond(tf.random.uniform([], seed=seed) < 0.5, lambda: cutmix(data), lambda: mixup(data))
        else:
            mixed = (cutmix or mixup)(data)
        return mixed["images"], mixed["labels"]

    return mix
