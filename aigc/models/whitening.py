"""A frozen patch-whitening first layer (airbench, hlb-CIFAR10): a 2x2 convolution whose filters are the
eigenvectors of the training patches' covariance, each scaled to unit variance.

Every direction of a 2x2x3 patch comes out with the same variance, so the first trained convolution
sees decorrelated inputs and learns them at one rate. Here that matters beyond speed: the smallest
eigenvalues belong to the finest pixel-to-pixel differences, where a generator leaves its fingerprint,
and whitening lifts them to the scale of the image's content. The layer is a plain Keras Conv2D with
trainable=False, so a saved model holds nothing but built-in layers; `fit_whitening` sets its kernel
from the training images once, before fit.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

NAME = "whiten"
PATCH = 2
CHANNELS = PATCH * PATCH * 3  # one filter per eigenvector of a PATCH x PATCH x 3 patch
EPS = 5e-4  # of the mean eigenvalue: airbench's 5e-4 on unit-variance inputs; keeps noise-only directions finite
SAMPLE = 2_000  # training images the covariance is taken from (every patch of each)
CHUNK = 64  # images a covariance step holds at once: 64 x 99 x 99 patches of 12 floats is 60 MB


def whitening_layer() -> layers.Conv2D:
    """The frozen 2x2 layer; its kernel is random until `fit_whitening` sets it."""
    return layers.Conv2D(CHANNELS, PATCH, padding="valid", use_bias=False, trainable=False, name=NAME)


def whitening_kernel(images) -> np.ndarray:
    """(PATCH, PATCH, 3, CHANNELS) filters that whiten the 2x2 patches of `images` (N x H x W x 3, 0..255),
    largest eigenvalue first."""
    total, outer, count = np.zeros(CHANNELS), np.zeros((CHANNELS, CHANNELS)), 0
    for start in range(0, len(images), CHUNK):
        pixels = np.asarray(images[start:start + CHUNK], dtype=np.float32) / 255  # as the model's Rescaling
        windows = np.lib.stride_tricks.sliding_window_view(pixels, (PATCH, PATCH), axis=(1, 2))
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, CHANNELS).astype(np.float64)  # (row, col, rgb)
        total, outer, count = total + patches.sum(0), outer + patches.T @ patches, count + len(patches)
    mean = total / count
    covariance = outer / count - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    filters = vectors / np.sqrt(np.maximum(values, 0) + EPS * values.mean())
    return filters.reshape(PATCH, PATCH, 3, CHANNELS).astype(np.float32)


def fit_whitening(model: keras.Model, images, seed: int = 0) -> bool:
    """Set the model's whitening layer (if it has one) from up to SAMPLE of the training `images`
    (indexable like the decoded cache); True when it had one."""
    try:
        layer = model.get_layer(NAME)
    except ValueError:
        return False
    rows = np.arange(len(images))
    if len(rows) > SAMPLE:  # sorted: the cache reads rows in order
        rows = np.sort(np.random.default_rng(seed).choice(rows, SAMPLE, replace=False))
    layer.kernel.assign(whitening_kernel(images[rows]))
    return True
