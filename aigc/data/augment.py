"""Data augmentation: Keras 2 `ImageDataGenerator` options rebuilt with Keras 3 layers.

Every number keeps the meaning it had in `ImageDataGenerator` (IDG), so an old
Kaggle solution's settings can be copied over unchanged:

==================  =====================================  ==========================================
option              IDG meaning                            implementation here
==================  =====================================  ==========================================
rotation r          angle ~ U(-r, r) degrees               RandomRotation(factor=r / 360)
width_shift f       shift ~ U(-f, f) * width  (f < 1)      RandomTranslation(width_factor=f)
height_shift f      shift ~ U(-f, f) * height (f < 1)      RandomTranslation(height_factor=f)
shear s             shear ANGLE ~ U(-s, s) degrees         RandomShearAngle(s)  (custom, see below)
zoom z              zx, zy ~ U(1-z, 1+z) independently     RandomZoom(height_factor=z, width_factor=z)
brightness (lo,hi)  pixels * U(lo, hi), clipped to 0..255  RandomBrightnessMultiply (custom)
horizontal_flip     mirror left-right with p = 0.5         RandomFlip("horizontal")
vertical_flip       mirror up-down with p = 0.5            RandomFlip("vertical")
channel_shift c     + U(-c, c) to all channels, clipped    RandomChannelShift (custom)
                    to the image's own min / max
==================  =====================================  ==========================================

All geometric layers use IDG's defaults: bilinear interpolation (scipy order=1) and
fill_mode="nearest". Layers run in IDG's order (affine part, channel shift, flips,
brightness); the affine layers are ordered rotation, shift, shear, zoom so that their
chained output->input maps compose to IDG's single matrix ``R @ T @ S @ Z``.

Two documented IDG quirks are deliberately NOT reproduced: tf.keras 2.x swapped the
axes of width/height_shift_range (keras-team/keras#17398), and it centred its affine
matrix with the wrong axis on non-square images. Here width_shift moves along the
width and every transform is centred on the image centre, as IDG's docs promise.

`keras.layers.RandomShear` is not used for `shear`: its factor is a slope (tan of the
angle) capped at 1, it shears about the top-left corner (so it also translates the
image), and it lacks IDG's cos() term. `RandomShearAngle` applies IDG's exact matrix.

CutMix / MixUp (`mix_batch`) work on a whole batch with one-hot labels and use tf ops
directly, because they only ever run inside a tf.data pipeline.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from aigc.errors import UserError

__all__ = [
    "RandomBrightnessMultiply",
    "RandomChannelShift",
    "RandomShearAngle",
    "build_augmenter",
    "idg_shear_transform",
    "mix_batch",
]

# IDG's defaults: scipy.ndimage order=1 (bilinear) and fill_mode="nearest".
_INTERPOLATION = "bilinear"
_FILL_MODE = "nearest"


def _per_image_shape(images):
    """(B, 1, 1, 1) for a batch, (1, 1, 1) for one image: one random draw per image."""
    return tuple(ops.shape(images)[:-3]) + (1, 1, 1)


def idg_shear_transform(angles_deg, height):
    """(N, 8) projective transforms of IDG's shear by `angles_deg` (N,), about the image centre."""
    # IDG (tf.keras 2.x, after its x/y swap fix) maps an output pixel (x, y) to the input
    # pixel x' = x - sin(a) * (y - cy), y' = cy + cos(a) * (y - cy), centred on the image.
    angles = ops.cast(angles_deg, "float32") * (math.pi / 180.0)
    sin, cos = ops.sin(angles), ops.cos(angles)
    cy = (ops.cast(height, "float32") - 1.0) / 2.0
    # Rows slide horizontally in proportion to (y - cy): x needs no centring term.
    zeros, ones = ops.zeros_like(angles), ops.ones_like(angles)
    return ops.stack(
        [ones, -sin, sin * cy, zeros, cos, cy * (1.0 - cos), zeros, zeros], axis=-1
    )


class _RandomImageLayer(keras.layers.Layer):
    """Shared plumbing of the custom layers: a seeded generator, identity when not training."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        return self.transform(ops.cast(images, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="aigc")
class RandomShearAngle(_RandomImageLayer):
    """IDG's shear: a random shear ANGLE ~ U(-degrees, degrees), centred, bilinear, nearest fill."""

    def __init__(self, degrees, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.degrees = float(degrees)

    def transform(self, images):
        unbatched = len(images.shape) == 3
        if unbatched:  # affine_transform needs one transform row per image
            images = ops.expand_dims(images, 0)
        shape = ops.shape(images)
        angles = keras.random.uniform(
            (shape[0],), -self.degrees, self.degrees, seed=self.generator
        )
        out = ops.image.affine_transform(
            images,
            idg_shear_transform(angles, shape[1]),
            interpolation=_INTERPOLATION,
            fill_mode=_FILL_MODE,
        )
        return ops.squeeze(out, 0) if unbatched else out

    def get_config(self):
        return {**super().get_config(), "degrees": self.degrees}


@keras.saving.register_keras_serializable(package="aigc")
class RandomBrightnessMultiply(_RandomImageLayer):
    """IDG's brightness_range: multiply each image by U(lower, upper), clip to [0, 255]."""

    def __init__(self, lower, upper, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.lower, self.upper = float(lower), float(upper)

    def transform(self, images):
        factor = keras.random.uniform(
            _per_image_shape(images), self.lower, self.upper, seed=self.generator,
            dtype=images.dtype,  # float16 under mixed precision
        )
        # IDG went through PIL's ImageEnhance.Brightness on uint8, hence the 0..255 clip.
        return ops.clip(images * factor, 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "lower": self.lower, "upper": self.upper}


@keras.saving.register_keras_serializable(package="aigc")
class RandomChannelShift(_RandomImageLayer):
    """IDG's channel_shift_range: add one U(-c, c) to all channels, clip to the image's min/max."""

    def __init__(self, intensity, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.intensity = float(intensity)

    def transform(self, images):
        shift = keras.random.uniform(
            _per_image_shape(images), -self.intensity, self.intensity, seed=self.generator,
            dtype=images.dtype,  # float16 under mixed precision
        )
        # IDG draws ONE intensity per image (not per channel) and clips every channel to
        # the min/max taken over the whole image, so the value range never grows.
        lo = ops.min(images, axis=(-3, -2, -1), keepdims=True)
        hi = ops.max(images, axis=(-3, -2, -1), keepdims=True)
        return ops.minimum(ops.maximum(images + shift, lo), hi)

    def get_config(self):
        return {**super().get_config(), "intensity": self.intensity}


def _number(aug, name, low, high, high_open=False):
    """`aug.<name>` as a float in [low, high] (or [low, high)), else a UserError naming it."""
    value = float(getattr(aug, name, 0) or 0)
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or value < low or too_high:
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise UserError(f"augment.{name} must be in {bound}; got {value}.")
    return value


def build_augmenter(aug, seed=None):
    """Layers for one config; None when nothing is switched on."""
    rotation = _number(aug, "rotation", 0, 360)
    # IDG read values >= 1 as pixels; only fractions are supported here.
    width_shift = _number(aug, "width_shift", 0, 1, high_open=True)
    height_shift = _number(aug, "height_shift", 0, 1, high_open=True)
    shear = _number(aug, "shear", 0, 90, high_open=True)
    zoom = _number(aug, "zoom", 0, 1, high_open=True)  # 1 - z must stay > 0
    channel_shift = _number(aug, "channel_shift", 0, 255)
    brightness = getattr(aug, "brightness", None)
    if brightness is not None:
        try:
            lo, hi = (float(v) for v in brightness)
        except (TypeError, ValueError):
            raise UserError(
                f"augment.brightness must be two numbers [lo, hi]; got {brightness!r}."
            ) from None
        if not (0 <= lo <= hi and math.isfinite(hi)):
            raise UserError(
                f"augment.brightness needs 0 <= lo <= hi; got {brightness!r}."
            )

    # Distinct seeds per layer: equal seeds would correlate e.g. flips with rotations.
    counter = iter(range(100))

    def next_seed():
        i = next(counter)
        return None if seed is None else int(seed) + i

    geometry = {"interpolation": _INTERPOLATION, "fill_mode": _FILL_MODE}
    layers = []
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation / 360.0, seed=next_seed(), **geometry))
    if width_shift or height_shift:
        layers.append(
            keras.layers.RandomTranslation(
                height_factor=height_shift, width_factor=width_shift, seed=next_seed(), **geometry
            )
        )
    if shear:
        layers.append(RandomShearAngle(shear, seed=next_seed()))
    if zoom:
        # Both factors given: Keras then draws zx and zy independently, as IDG does.
        layers.append(
            keras.layers.RandomZoom(
                height_factor=zoom, width_factor=zoom, seed=next_seed(), **geometry
            )
        )
    if channel_shift:
        layers.append(RandomChannelShift(channel_shift, seed=next_seed()))
    # Two separate layers: RandomFlip("horizontal_and_vertical") uses ONE coin for both
    # axes, while IDG flips each axis on its own coin.
    if getattr(aug, "horizontal_flip", False):
        layers.append(keras.layers.RandomFlip("horizontal", seed=next_seed()))
    if getattr(aug, "vertical_flip", False):
        layers.append(keras.layers.RandomFlip("vertical", seed=next_seed()))
    if brightness is not None:
        layers.append(RandomBrightnessMultiply(lo, hi, seed=next_seed()))
    if not layers:
        return None
    return keras.Sequential(layers, name="augmenter")


def _alpha(aug, name):
    """Beta-distribution alpha `aug.<name>` (0 = off), else a UserError naming it."""
    value = float(getattr(aug, name, 0) or 0)
    if not math.isfinite(value) or value < 0:
        raise UserError(f"augment.{name} must be >= 0 (0 = off); got {value}.")
    return value


def _beta(n, alpha, seeds):
    """n draws of Beta(alpha, alpha) as Gamma(alpha) / (Gamma(alpha) + Gamma(alpha))."""
    a = tf.random.gamma([n], alpha, seed=next(seeds))
    b = tf.random.gamma([n], alpha, seed=next(seeds))
    return tf.math.divide_no_nan(a, a + b)  # both can underflow to 0 for tiny alphas


def _cutmix(images, partners, alpha, seeds):
    """Paste a random box of each partner into each image; returns (images, own-label weight)."""
    shape = tf.shape(images)
    n, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    lam = _beta(n, alpha, seeds)
    cut = tf.sqrt(1.0 - lam)  # box side ratio, so that box area = (1 - lam) * image area
    cy = tf.random.uniform([n], 0.0, h, seed=next(seeds))
    cx = tf.random.uniform([n], 0.0, w, seed=next(seeds))
    y1 = tf.clip_by_value(tf.round(cy - h * cut / 2), 0.0, h)
    y2 = tf.clip_by_value(tf.round(cy + h * cut / 2), 0.0, h)
    x1 = tf.clip_by_value(tf.round(cx - w * cut / 2), 0.0, w)
    x2 = tf.clip_by_value(tf.round(cx + w * cut / 2), 0.0, w)
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    in_rows = (rows >= y1[:, None]) & (rows < y2[:, None])
    in_cols = (cols >= x1[:, None]) & (cols < x2[:, None])
    box = (in_rows[:, :, None] & in_cols[:, None, :])[..., None]
    mixed = tf.where(box, partners, images)
    # The box is clipped at the border, so weigh labels by the area actually pasted.
    own = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return mixed, own


def _mixup(images, partners, alpha, seeds):
    """Blend each image with its partner; returns (images, own-label weight)."""
    lam = _beta(tf.shape(images)[0], alpha, seeds)
    weight = lam[:, None, None, None]
    return weight * images + (1.0 - weight) * partners, lam


def mix_batch(images, labels_onehot, aug, seed=None):
    """CutMix / MixUp on a batch (identity when both alphas are 0)."""
    cutmix, mixup = _alpha(aug, "cutmix"), _alpha(aug, "mixup")
    if not cutmix and not mixup:
        return images, labels_onehot
    # Op-level seeds on stateful ops: reproducible, yet new values on every batch even
    # though tf.data traces this function only once. One distinct seed per op.
    seeds = iter([None] * 16 if seed is None else range(int(seed), int(seed) + 16))
    images = tf.cast(images, tf.float32)
    labels = tf.cast(labels_onehot, tf.float32)
    partner = tf.random.shuffle(tf.range(tf.shape(images)[0]), seed=next(seeds))
    other_images = tf.gather(images, partner)
    other_labels = tf.gather(labels, partner)

    if cutmix and mixup:
        # Both on: each image gets one of the two at random (p = 0.5), as timm does.
        cut_images, cut_own = _cutmix(images, other_images, cutmix, seeds)
        mix_images, mix_own = _mixup(images, other_images, mixup, seeds)
        use_cut = tf.random.uniform([tf.shape(images)[0]], seed=next(seeds)) < 0.5
        mixed = tf.where(use_cut[:, None, None, None], cut_images, mix_images)
        own = tf.where(use_cut, cut_own, mix_own)
    elif cutmix:
        mixed, own = _cutmix(images, other_images, cutmix, seeds)
    else:
        mixed, own = _mixup(images, other_images, mixup, seeds)

    mixed_labels = own[:, None] * labels + (1.0 - own[:, None]) * other_labels
    # Keep the static shapes tf.data knew before (the box mask has dynamic ones).
    return tf.ensure_shape(mixed, images.shape), tf.ensure_shape(mixed_labels, labels.shape)
