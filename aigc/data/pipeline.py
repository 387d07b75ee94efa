"""tf.data input pipelines over the decoded cache: shuffle, oversample, batch, augment, prefetch.

Batches are gathered from the decoded cache by index (pread of just those rows), so a
dataset of any size streams without ever being loaded whole and no PNG is decoded again.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from aigc.config import AugmentConfig, DataConfig
from aigc.data.augment import batch_mixer, build_augmenter


def oversampled_indices(labels: np.ndarray, oversample: dict) -> np.ndarray:
    """Each image index repeated by its class factor ({4: 3, "default": 2} as in the deepfake report)."""
    if not oversample:
        return np.arange(len(labels))
    default = int(oversample.get("default", 1))
    factors = np.array([int(oversample.get(int(label), oversample.get(str(int(label)), default))) for label in labels])
    return np.repeat(np.arange(len(labels)), factors)


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """'balanced' weights (n / (k * count)) as scikit-learn defines them, or None."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


class AlternatingFlip:
    """Mirrors each image on alternate reads: its first read by a coin, then every other one (airbench).

    Every image is read once an epoch, so each one shows both sides over any two epochs, where a coin
    per read repeats a side about half the time. Counting reads needs no epoch number inside tf.data;
    a lock, as tf.data reads batches on several threads.
    """

    def __init__(self, count: int, seed: int):
        self.reads = np.random.default_rng(seed).integers(0, 2, count)  # the first read's coin
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray, indices: np.ndarray) -> np.ndarray:
        with self.lock:  # an image oversampled twice into one batch shows the same side in both
            mirrored = self.reads[indices] % 2 == 1
            self.reads[indices] += 1
        batch[mirrored] = batch[mirrored, :, ::-1]
        return batch


def _gather(images: np.ndarray, labels: np.ndarray | None, flip: AlternatingFlip | None = None):
    """A tf.data map that reads one batch of indices from the cache (sorted: sequential reads)."""

    def read(indices):
        order = np.sort(indices)
        batch = np.asarray(images[order], dtype=np.float32)
        if flip is not None:
            batch = flip(batch, order)
        picked = labels[order] if labels is not None else np.zeros(len(order), np.int64)
        return batch, picked.astype(np.int64)

    def gather(indices):
        batch, picked = tf.numpy_function(read, [indices], [tf.float32, tf.int64])
        batch.set_shape([None, *images.shape[1:]])
        picked.set_shape([None])
        return batch, picked

    return gather


def train_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, data: DataConfig,
                  augment: AugmentConfig, seed: int) -> tf.data.Dataset:
    """Shuffled, oversampled, augmented batches of (float32 pixels 0..255, one-hot labels)."""
    indices = oversampled_indices(labels, data.oversample)
    ds = tf.data.Dataset.from_tensor_slices(indices)
    ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    flip = AlternatingFlip(len(images), seed) if augment.alternating_flip else None
    ds = ds.batch(data.batch_size).map(_gather(images, labels, flip), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    augmenter = None if augment.on_device else build_augmenter(augment, seed=seed)  # on_device: in the model
    if augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    mix = batch_mixer(augment, seed=seed)
    if mix is not None:
        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return _prefetched(ds)


def eval_dataset(images: np.ndarray, labels: np.ndarray | None, num_classes: int, batch_size: int,
                 flip: bool = False) -> tf.data.Dataset:
    """Batches in file order, no augmentation (`flip`: mirrored, for test-time augmentation)."""
    ds = tf.data.Dataset.range(len(images)).batch(batch_size)
    ds = ds.map(_gather(images, labels), num_parallel_calls=tf.data.AUTOTUNE)
    if flip:
        ds = ds.map(lambda x, y: (tf.reverse(x, axis=[2]), y), num_parallel_calls=tf.data.AUTOTUNE)
    if labels is None:
        ds = ds.map(lambda x, y: x)
    else:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    return _prefetched(ds)


def _prefetched(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Prefetch, with tf.data's autotuner off.

    In TF 2.21 the autotuner's optimisation thread does not wake up when its iterator is
    destroyed, so the end of every fit and predict waited for its timer: up to 10 s, often
    (seen in gdb: ~RootDataset::Iterator waiting on Model::OptimizeLoop). Without it,
    AUTOTUNE means one parallel call per core, which is all 2 to 16 cores need here.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
