"""The optimizer a config names: Adam, AdamW or SGD, its learning rate, weight averaging, and a faster
rate for the normalisation layers' offsets."""

from __future__ import annotations

import keras

from aigc.config import TrainConfig


def learning_rate(train: TrainConfig):
    """A float, or a schedule object for the exponential / cosine schedules."""
    if train.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(train.learning_rate, train.decay_steps, train.decay_rate)
    if train.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(train.learning_rate, train.decay_steps)
    return train.learning_rate


class FasterNormOffsets:
    """Gives the normalisation layers' offsets (BatchNorm's beta) `bn_bias_lr_scale` times the learning rate.

    The CIFAR-10 speed records train BatchNorm biases faster than the kernels (airbench and hlb-CIFAR10:
    64x under SGD): one number per channel, cheap to move, slow to learn at the kernels' rate. Keras 3.15
    has no per-variable rate; `update_step`, the method a Keras optimizer subclass implements, receives each
    variable's rate, so the scale is applied there. Mixed into Adam, AdamW and SGD below.
    """

    def __init__(self, *args, bn_bias_lr_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.bn_bias_lr_scale = float(bn_bias_lr_scale)

    def build(self, variables):
        super().build(variables)
        self._offsets = {index for index, variable in enumerate(variables) if variable.name == "beta"}

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in self._offsets:  # a Python set: decided when the step is traced
            learning_rate = learning_rate * self.bn_bias_lr_scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "bn_bias_lr_scale": self.bn_bias_lr_scale}


@keras.saving.register_keras_serializable(package="aigc")
class Adam(FasterNormOffsets, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="aigc")
class AdamW(FasterNormOffsets, keras.optimizers.AdamW):
    pass


@keras.saving.register_keras_serializable(package="aigc")
class SGD(FasterNormOffsets, keras.optimizers.SGD):
    pass


OPTIMIZERS = {"adam": (keras.optimizers.Adam, Adam), "adamw": (keras.optimizers.AdamW, AdamW),
              "sgd": (keras.optimizers.SGD, SGD)}  # name -> (Keras' own, with faster offsets)


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    options = {"use_ema": bool(train.ema), "ema_momentum": train.ema or 0.99,
               "ema_overwrite_frequency": train.ema_overwrite_frequency}
    if train.optimizer == "adamw":
        options["weight_decay"] = train.weight_decay
    if train.optimizer == "sgd":
        options["momentum"] = train.momentum
    plain, faster = OPTIMIZERS[train.optimizer]
    if train.bn_bias_lr_scale != 1:  # Keras' own class otherwise: a saved model names only built-in classes
        optimizer = faster(learning_rate(train), bn_bias_lr_scale=train.bn_bias_lr_scale, **options)
    else:
        optimizer = plain(learning_rate(train), **options)
    if train.optimizer == "adamw":
        # decay shrinks weights toward 0: meaningless for biases and the norms' scale/offset (as in AdamW's paper)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def current_learning_rate(model: keras.Model) -> float:
    """The rate the optimizer uses now (schedules are evaluated at the current step)."""
    optimizer = model.optimizer
    rate = optimizer.learning_rate
    if callable(rate):
        rate = rate(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(rate))
