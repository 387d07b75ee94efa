"""The gic seed's keras-tuner CNN: three Conv-MaxPool-Dropout blocks, global pooling, Dense head.

`build` makes one fixed model (defaults: the seed's best trial); `build_from_hp` declares the
search space on a `keras_tuner.HyperParameters` and delegates to `build`.
"""

import keras
from keras import layers

from aigc.models.common import ParamError, classifier, image_input, per_layer

BLOCKS = 3

# The seed's search space. ("choice", values) | ("float", min, max, step) | ("boolean",).
# extra_dense_units / extra_dropout are only active when extra_dense is true; the seed report
# does not give their ranges, these are ours.
SEARCH_SPACE = {
    "filters_1": ("choice", [32, 64, 128]),
    "filters_2": ("choice", [64, 128, 256]),
    "filters_3": ("choice", [64, 128, 256, 512]),
    "kernel_1": ("choice", [3, 5]),
    "kernel_2": ("choice", [3, 5]),
    "kernel_3": ("choice", [3, 5]),
    "padding": ("choice", ["same", "valid"]),
    "strides_1": ("choice", [1, 2]),
    "strides_2": ("choice", [1, 2]),
    "strides_3": ("choice", [1, 2]),
    "dropout_1": ("float", 0.0, 0.3, 0.1),
    "dropout_2": ("float", 0.0, 0.3, 0.1),
    "dropout_3": ("float", 0.0, 0.3, 0.1),
    "global_pooling": ("choice", ["max", "avg"]),
    "extra_dense": ("boolean",),
    "extra_dense_units": ("choice", [128, 256, 512]),
    "extra_dropout": ("choice", [0.0, 0.3, 0.5]),
    "dense_final": ("choice", [128, 256, 512]),
    "dropout_final": ("choice", [0.0, 0.3, 0.5]),
}

CONDITIONAL = ("extra_dense_units", "extra_dropout")  # active only when extra_dense is true

GLOBAL_POOLING = {
    "avg": layers.GlobalAveragePooling2D,
    "max": layers.GlobalMaxPooling2D,
}


def build(
    input_shape,
    num_classes,
    *,
    filters=(128, 128, 512),
    kernel_sizes=(3, 3, 3),
    padding="same",
    pool_strides=(2, 2, 1),
    dropouts=(0.0, 0.1, 0.1),
    global_pooling="avg",
    extra_dense=False,
    extra_dense_units=256,
    extra_dropout=0.3,
    dense_final=128,
    dropout_final=0.3,
):
    """Conv-MaxPool(2, stride)-Dropout x3, global `avg`/`max` pooling, [Dense-Dropout], Dense-Dropout, softmax.

    Defaults are the seed's best trial (the optimizer is the training config's business).
    """
    count = len(list(filters))
    kernel_sizes = per_layer("kernel_sizes", kernel_sizes, count)
    pool_strides = per_layer("pool_strides", pool_strides, count)
    dropouts = per_layer("dropouts", dropouts, count)
    if global_pooling not in GLOBAL_POOLING:
        raise ParamError(
            f"global_pooling: must be one of {sorted(GLOBAL_POOLING)}, got {global_pooling!r}"
        )

    inputs, x = image_input(input_shape)
    for i, (width, kernel, stride, rate) in enumerate(
        zip(filters, kernel_sizes, pool_strides, dropouts), start=1
    ):
        x = layers.Conv2D(
            width, kernel, padding=padding, activation="relu", name=f"conv{i}"
        )(x)
        x = layers.MaxPooling2D(2, strides=stride, name=f"pool{i}")(x)
        x = layers.Dropout(rate, name=f"dropout{i}")(x)
    x = GLOBAL_POOLING[global_pooling](name="global_pool")(x)
    if extra_dense:
        x = layers.Dense(extra_dense_units, activation="relu", name="extra_dense")(x)
        x = layers.Dropout(extra_dropout, name="extra_dropout")(x)
    x = layers.Dense(dense_final, activation="relu", name="dense_final")(x)
    x = layers.Dropout(dropout_final, name="dropout_final")(x)
    outputs = classifier(x, num_classes)
    return keras.Model(inputs, outputs, name="tunable_cnn")


def same_type(values):
    """keras-tuner wants one type per Choice: YAML's [0, 0.3, 0.5] becomes floats."""
    if any(isinstance(v, float) for v in values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        return [float(v) for v in values]
    return list(values)


def declare(hp, name, space):
    """Declare hyperparameter `name` on `hp`, from `space` if it overrides it, else from SEARCH_SPACE.

    An override is a list (choices; one value fixes it), a mapping {min, max[, step]} (a float range)
    or a scalar (fixed).
    """
    if name not in space:
        kind, *args = SEARCH_SPACE[name]
        if kind == "choice":
            return hp.Choice(name, args[0])
        if kind == "float":
            low, high, step = args
            return hp.Float(name, low, high, step=step)
        return hp.Boolean(name)
    override = space[name]
    try:
        if isinstance(override, dict):
            unknown = set(override) - {"min", "max", "step"}
            if unknown or not {"min", "max"} <= set(override):
                raise ParamError(
                    f"space.{name}: a range needs keys min, max and optionally step, got {override}"
                )
            return hp.Float(
                name,
                float(override["min"]),
                float(override["max"]),
                step=override.get("step"),
            )
        if isinstance(override, (list, tuple)):
            values = same_type(override)
            if not values:
                raise ParamError(f"space.{name}: the list of choices is empty")
            return (
                hp.Fixed(name, values[0])
                if len(values) == 1
                else hp.Choice(name, values)
            )
        return hp.Fixed(name, override)
    except (TypeError, ValueError) as error:
        if isinstance(error, ParamError):
            raise
        raise ParamError(f"space.{name}: {error}") from error


def build_from_hp(hp, input_shape, num_classes, space=None):
    """Declare the seed's search space on `hp` (with `space` overriding any name's range) and build."""
    space = dict(space or {})
    unknown = sorted(set(space) - set(SEARCH_SPACE))
    if unknown:
        raise ParamError(
            f"unknown search-space key(s) {', '.join(unknown)}; accepted: {', '.join(SEARCH_SPACE)}"
        )
    values = {}
    for name in SEARCH_SPACE:
        if name in CONDITIONAL:
            # Declared in every trial so the tuner knows the whole space; only used when extra_dense is on.
            with hp.conditional_scope("extra_dense", [True]):
                values[name] = declare(hp, name, space)
        else:
            values[name] = declare(hp, name, space)
    return build(input_shape, num_classes, **build_kwargs(values))


def build_kwargs(values):
    """Hyperparameter values (the names of SEARCH_SPACE) -> keyword arguments of `build`.

    extra_dense_units / extra_dropout are passed only when extra_dense is on (else they are inactive).
    """
    blocks = range(1, BLOCKS + 1)
    kwargs = {
        "filters": [values[f"filters_{i}"] for i in blocks],
        "kernel_sizes": [values[f"kernel_{i}"] for i in blocks],
        "padding": values["padding"],
        "pool_strides": [values[f"strides_{i}"] for i in blocks],
        "dropouts": [values[f"dropout_{i}"] for i in blocks],
        "global_pooling": values["global_pooling"],
        "extra_dense": bool(values["extra_dense"]),
        "dense_final": values["dense_final"],
        "dropout_final": values["dropout_final"],
    }
    if kwargs["extra_dense"]:
        kwargs.update(extra_dense_units=values["extra_dense_units"], extra_dropout=values["extra_dropout"])
    return kwargs
