"""The gic seed's basic CNN: Conv-MaxPool-Dropout blocks, BatchNorm, global pooling, one Dense."""

import keras
from keras import layers

from aigc.models.common import classifier, image_input, l2_or_none, per_layer


def build(
    input_shape,
    num_classes,
    *,
    filters=(256, 512, 512),
    kernel_sizes=(3, 3, 3),
    paddings=("same", "valid", "valid"),
    pool_strides=(2, 2, 1),
    dropout_rates=(0.2, 0.2, 0.2),
    dense_units=128,
    dense_dropout=0.3,
    l2=1e-4,
):
    """One Conv-MaxPool(2)-Dropout block per entry of `filters`; `l2` regularizes the Dense kernel and activity.

    Defaults are the seed (3,627,748 parameters at 64x64x3, 100 classes).
    """
    count = len(list(filters))
    kernel_sizes = per_layer("kernel_sizes", kernel_sizes, count)
    paddings = per_layer("paddings", paddings, count)
    pool_strides = per_layer("pool_strides", pool_strides, count)
    dropout_rates = per_layer("dropout_rates", dropout_rates, count)

    inputs, x = image_input(input_shape)
    for i, (width, kernel, padding, stride, rate) in enumerate(
        zip(filters, kernel_sizes, paddings, pool_strides, dropout_rates), start=1
    ):
        x = layers.Conv2D(
            width, kernel, padding=padding, activation="relu", name=f"conv{i}"
        )(x)
        x = layers.MaxPooling2D(2, strides=stride, name=f"pool{i}")(x)
        x = layers.Dropout(rate, name=f"dropout{i}")(x)
    x = layers.BatchNormalization(name="batch_norm")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dense(
        dense_units,
        activation="relu",
        kernel_initializer="variance_scaling",
        kernel_regularizer=l2_or_none(l2),
        activity_regularizer=l2_or_none(l2),
        name="dense",
    )(x)
    x = layers.Dropout(dense_dropout, name="dense_dropout")(x)
    outputs = classifier(x, num_classes)
    return keras.Model(inputs, outputs, name="cnn")
