"""ResNet-(6n+2) for small images (He et al. 2016, CIFAR variant): the gic seed's ResNet20."""

import keras
from keras import layers

from aigc.models.common import ParamError, classifier, image_input, l2_or_none


def conv_bn(x, filters, kernel_size, strides, regularizer, name):
    """Conv (no activation) followed by BatchNorm."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=f"{name}_conv",
    )(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def residual_block(x, filters, strides, regularizer, name):
    """Conv3x3(stride)-BN-ReLU-Conv3x3-BN plus the skip, then ReLU."""
    shortcut = x
    y = conv_bn(x, filters, 3, strides, regularizer, f"{name}_1")
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = conv_bn(y, filters, 3, 1, regularizer, f"{name}_2")
    if strides != 1 or shortcut.shape[-1] != filters:
        # The skip must match the downsampled, wider main path: 1x1 projection.
        shortcut = conv_bn(shortcut, filters, 1, strides, regularizer, f"{name}_proj")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build(input_shape, num_classes, *, depth=20, base_filters=16, l2=0.0):
    """ResNet with `depth` = 6n+2 layers: 3 stages of n blocks, filters base, 2x base, 4x base.

    Defaults are the seed's ResNet20 (280,676 parameters at 64x64x3, 100 classes).
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ParamError(f"depth: must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
    blocks_per_stage = (depth - 2) // 6
    regularizer = l2_or_none(l2)

    inputs, x = image_input(input_shape)
    x = conv_bn(x, base_filters, 3, 1, regularizer, "stem")
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage in range(3):
        filters = base_filters * 2**stage
        for block in range(blocks_per_stage):
            # Stages 2 and 3 halve the feature map in their first block.
            strides = 2 if stage > 0 and block == 0 else 1
            x = residual_block(
                x, filters, strides, regularizer, f"stage{stage + 1}_block{block + 1}"
            )
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = classifier(x, num_classes, regularizer)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")
