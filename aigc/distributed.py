"""Training on several machines: the strategy from TF_CONFIG, who the chief is, and a Keras 3 workaround.

Keras 3.15.1's TensorFlow trainer cannot fit under MultiWorkerMirroredStrategy with more than one
worker (keras-team/keras#20585, open). `adapt` wraps the model to fit in `MultiWorkerModel`, which
works around it, and predicts on one worker alone (what the chief logs); on one machine it returns
the model unchanged.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf


def strategy() -> tf.distribute.Strategy:
    """Workers from TF_CONFIG, else every local GPU, else the default single device."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """Only the chief of a multi-worker job writes to MLflow (workers' writes would race)."""
    spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = spec.get("task", {})
    if not task:
        return True
    return task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index", 0) == 0
                                           and "chief" not in spec.get("cluster", {}))


def adapt(model: keras.Model) -> keras.Model:
    """`model` as a MultiWorkerModel (same layers and weights) when it was built under a multi-worker strategy,
    else itself.

    Both of its uses: to fit there (call it inside the strategy's scope, before compile), and to predict on
    this worker alone. Keras' own predict there is a collective: each worker predicts its shard of the rows
    and the rows are gathered. What the chief logs beside the model it saves must be that model's
    predictions, every row computed with the chief's own weights in the dataset's order.
    """
    if not isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model
    return MultiWorkerModel(model.inputs, model.outputs, name=model.name)


class MultiWorkerModel(keras.Model):
    """A functional model that Keras 3.15.1 can fit, evaluate and predict with under MultiWorkerMirroredStrategy.

    What it changes, each for a failure of Keras' TensorFlow trainer (keras/src/backend/tensorflow/trainer.py):
    - fit's first batch: Keras builds the model's metrics and optimizer from it by
      `strategy.reduce("MEAN", batch, axis=None)`, which takes one tensor, not the (x, y) nest, and fails.
      This builds them from this worker's share of that batch instead (no public hook exists).
    - each step's logs: Keras averages them across workers with `strategy.reduce("MEAN", v, axis=0)`,
      which fails on the scalars train_step returns. The steps return them as 1-D values of length 1
      (the "customizing what happens in fit" way); the mean along axis 0 then gives the scalar.
      The epoch's logs are the metrics themselves, summed over all workers: exact, as on one machine.
    - predict: Keras' predict is a collective that gathers the workers' shares of the data; they come
      back in the dataset's order only while tf.data shards by batch (aigc's in-memory datasets do,
      checked; sharding by file would reorder rows). Here each worker runs the forward pass over the
      whole dataset, in order, on its own copy of the (identical) weights: every worker's validation
      metrics are those a single-process evaluate gives, whatever the sharding.
    - the weights every worker holds: Keras 3 creates BatchNormalization's moving mean and variance
      with aggregation "none", so each worker tracks its own shard's statistics (tf.keras averaged
      them). Workers would then validate differently, and a callback that stops training on one
      worker only would leave the other waiting forever. fit averages them across workers at each
      epoch's end, before any callback reads them (the moving averages are linear: the same as
      averaging at every step).
    """

    def fit(self, *args, callbacks=None, **kwargs):
        return super().fit(*args, callbacks=[_AverageStatistics()] + list(callbacks or []), **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15.1's private hook: fit hands it the first batch and fails inside it, so no public API can stand
        # in; it goes when Keras 3 supports MultiWorkerMirroredStrategy (keras-team/keras#20585)
        if iterator is not None:
            for _, _, batches in iterator:
                local = self.distribute_strategy.experimental_local_results
                data_batch = keras.tree.map_structure(lambda value: local(value)[0], next(batches))
                break
        super()._maybe_symbolic_build(data_batch=data_batch)

    def train_step(self, data):
        return _one_dimensional(super().train_step(data))

    def test_step(self, data):
        return _one_dimensional(super().test_step(data))

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Probabilities of a tf.data.Dataset of images or (images, labels), computed by this worker alone."""
        if not isinstance(x, tf.data.Dataset):
            raise TypeError("MultiWorkerModel.predict takes a tf.data.Dataset")
        if getattr(self, "_forward", None) is None:  # traced once, not at every epoch's validation
            self._forward = tf.function(lambda images: self(images, training=False), reduce_retracing=True)
        batches = [self._forward(batch[0] if isinstance(batch, tuple) else batch) for batch in x]
        return np.concatenate([keras.ops.convert_to_numpy(batch) for batch in batches])


class _AverageStatistics(keras.callbacks.Callback):
    """Each epoch's end, before the other callbacks: the mean over workers of the float non-trainable weights."""

    def on_train_begin(self, logs=None):
        variables = [v for v in self.model.non_trainable_variables if "float" in v.dtype]
        strategy = self.model.distribute_strategy

        @tf.function  # eagerly, TF warns of the collectives' overhead
        def average():
            local = strategy.run(lambda: [tf.identity(v.value) for v in variables])  # this worker's values
            for variable, value in zip(variables, local):
                variable.assign(strategy.reduce("MEAN", value, axis=None))

        self.average = average

    def on_epoch_end(self, epoch, logs=None):
        self.average()


def _one_dimensional(logs: dict) -> dict:
    return {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}
