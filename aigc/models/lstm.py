"""The gic seed's LSTM: each image row is one time step of W*C features."""

import keras
from keras import layers

from aigc.models.common import classifier, image_input, l2_or_none


def build(
    input_shape,
    num_classes,
    *,
    units=(64, 128, 128, 256, 256),
    dropout_rate=0.2,
    dense_units=256,
    dense_dropout=0.2,
    l2=1e-4,
):
    """Stacked LSTMs (all returning sequences, each followed by Dropout), Flatten, Dense, softmax.

    Defaults are the seed (5,436,004 parameters at 64x64x3, 100 classes).
    """
    height, width, channels = input_shape
    inputs, x = image_input(input_shape)
    x = layers.Reshape((height, width * channels), name="rows_as_steps")(x)
    for i, size in enumerate(units, start=1):
        x = layers.LSTM(size, return_sequences=True, name=f"lstm{i}")(x)
        x = layers.Dropout(dropout_rate, name=f"dropout{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(
        dense_units, activation="relu", kernel_regularizer=l2_or_none(l2), name="dense"
    )(x)
    x = layers.Dropout(dense_dropout, name="dense_dropout")(x)
    outputs = classifier(x, num_classes)
    return keras.Model(inputs, outputs, name="lstm")
