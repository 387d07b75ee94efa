"""Helpers shared by every model builder."""

import keras
from keras import layers, regularizers


class ParamError(ValueError):
    """A model keyword parameter with a bad value (as opposed to a model that does not fit)."""


def image_input(input_shape):
    """Return `(inputs, x)`: the model input and its pixels rescaled from [0, 255] to [0, 1].

    Rescaling lives inside the model so a logged model takes raw pixel values.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    return inputs, x


def l2_or_none(weight):
    """An L2 regularizer, or None when the weight is 0 (so no regularizer is attached at all)."""
    if weight is None or weight == 0:
        return None
    if weight < 0:
        raise ParamError(f"l2: must be >= 0, got {weight}")
    return regularizers.L2(float(weight))


def classifier(x, num_classes, kernel_regularizer=None):
    """The output: class logits, then a softmax of its own in float32, so every model outputs probabilities.

    Under mixed_float16 the Dense computes in float16 (fast) but the softmax does not: exp and the
    normalising sum overflow and round in float16, so probabilities would be float16 values cast up.
    """
    logits = layers.Dense(num_classes, kernel_regularizer=kernel_regularizer, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="probabilities")(logits)


def per_layer(name, values, count):
    """Check that a per-layer list (e.g. one dropout per block) has `count` entries."""
    values = list(values)
    if len(values) != count:
        raise ParamError(
            f"{name}: needs {count} values (one per layer), got {len(values)}: {values}"
        )
    return values


def check_keys(where, given, required, optional=()):
    """Reject a config dict (e.g. one conv block) with missing or unknown keys."""
    if not isinstance(given, dict):
        raise ParamError(f"{where} must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(required) - set(optional))
    if unknown:
        accepted = ", ".join(list(required) + list(optional))
        raise ParamError(
            f"{where}: unknown key(s) {', '.join(unknown)}; accepted: {accepted}"
        )
    missing = [key for key in required if key not in given]
    if missing:
        raise ParamError(f"{where}: missing key(s) {', '.join(missing)}")
