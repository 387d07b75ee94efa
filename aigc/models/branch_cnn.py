"""The deepfake seed family: a Conv stack plus an optional wide-view second branch, then Dense layers.

Every attempt of the deepfake report is one set of keyword parameters of `build`:

- `conv_blocks`: list of mappings, one per Conv-ReLU[-MaxPool][-Dropout] block of the main path:
  `filters` (required), `kernel_size` (default 3), `padding` ("same" | "valid", default "same"),
  `pool` (bool, default false: MaxPooling2D after the conv), `pool_size` (default 2),
  `dropout` (default 0: no Dropout layer).
- `branch`: null for no second branch, or a mapping for Conv-ReLU-AveragePooling-Flatten from the
  input, concatenated with the main path: `filters` (required), `kernel_size` (default 5),
  `padding` (default "same"), `pool_size` (default 16).
- `dense`: list of mappings, one per Dense(ReLU)[-Dropout]: `units` (required), `dropout` (default 0).
- `l2`: L2 weight on every kernel (convs, branch, dense, output); 0 means none.
"""

import copy

import keras
from keras import layers

from aigc.models.common import (
    ParamError,
    check_keys,
    classifier,
    image_input,
    l2_or_none,
)

# The final attempt (89-90.9%): 70,389,583 parameters at 128x128x3, 5 classes.
FINAL_CONV_BLOCKS = (
    {"filters": 32, "kernel_size": 3, "pool": False, "dropout": 0.1},
    {"filters": 70, "kernel_size": 5, "pool": True, "dropout": 0.1},
    {"filters": 160, "kernel_size": 3, "pool": True, "dropout": 0.15},
)
FINAL_BRANCH = {"filters": 48, "kernel_size": 5, "pool_size": 16}
FINAL_DENSE = (
    {"units": 420, "dropout": 0.3},
    {"units": 256, "dropout": 0.15},
    {"units": 64, "dropout": 0.15},
)

CONV_BLOCK_DEFAULTS = {
    "kernel_size": 3,
    "padding": "same",
    "pool": False,
    "pool_size": 2,
    "dropout": 0.0,
}
BRANCH_DEFAULTS = {"kernel_size": 5, "padding": "same", "pool_size": 16}
DENSE_DEFAULTS = {"dropout": 0.0}


def complete(where, given, defaults, required):
    """Validate one block mapping and fill in its defaults."""
    check_keys(where, given, required, defaults)
    return {**defaults, **given}


def build(
    input_shape,
    num_classes,
    *,
    conv_blocks=FINAL_CONV_BLOCKS,
    branch=FINAL_BRANCH,
    dense=FINAL_DENSE,
    l2=1e-5,
):
    """Main Conv path (+ optional AveragePooling branch), Flatten, Dense stack, softmax; schema in the module docstring.

    Defaults are the final attempt (70,389,583 parameters at 128x128x3, 5 classes).
    """
    if not conv_blocks:
        raise ParamError("conv_blocks: must list at least one block")
    conv_blocks = [
        complete(
            f"conv_blocks[{i}]", copy.deepcopy(block), CONV_BLOCK_DEFAULTS, ["filters"]
        )
        for i, block in enumerate(conv_blocks)
    ]
    dense = [
        complete(f"dense[{i}]", dict(layer), DENSE_DEFAULTS, ["units"])
        for i, layer in enumerate(dense or [])
    ]
    if branch is not None:
        branch = complete("branch", dict(branch), BRANCH_DEFAULTS, ["filters"])
    regularizer = l2_or_none(l2)

    inputs, pixels = image_input(input_shape)
    x = pixels
    for i, block in enumerate(conv_blocks, start=1):
        x = layers.Conv2D(
            block["filters"],
            block["kernel_size"],
            padding=block["padding"],
            activation="relu",
            kernel_regularizer=regularizer,
            name=f"conv{i}",
        )(x)
        if block["pool"]:
            x = layers.MaxPooling2D(block["pool_size"], name=f"pool{i}")(x)
        if block["dropout"]:
            x = layers.Dropout(block["dropout"], name=f"dropout{i}")(x)
    x = layers.Flatten(name="flatten")(x)

    if branch is not None:
        # A coarse, heavily averaged view of the whole image, next to the fine-grained main path.
        side = layers.Conv2D(
            branch["filters"],
            branch["kernel_size"],
            padding=branch["padding"],
            activation="relu",
            kernel_regularizer=regularizer,
            name="branch_conv",
        )(pixels)
        side = layers.AveragePooling2D(branch["pool_size"], name="branch_pool")(side)
        side = layers.Flatten(name="branch_flatten")(side)
        x = layers.Concatenate(name="concat")([x, side])

    for i, layer in enumerate(dense, start=1):
        x = layers.Dense(
            layer["units"],
            activation="relu",
            kernel_regularizer=regularizer,
            name=f"dense{i}",
        )(x)
        if layer["dropout"]:
            x = layers.Dropout(layer["dropout"], name=f"dense_dropout{i}")(x)
    outputs = classifier(x, num_classes, regularizer)
    return keras.Model(inputs, outputs, name="branch_cnn")
