"""ResNet-9-style fast network (Page's DAWNBench CIFAR-10 net, "How to train your ResNet"), width scaled.

prep Conv(w) -> Conv(2w)+pool+residual(2 x Conv(2w)) -> Conv(4w)+pool -> Conv(8w)+pool+residual(2 x Conv(8w))
-> global max pool -> Dense. Every conv is 3x3-BN-ReLU. Few, wide layers: the most accuracy per second of
compute on small images, which is what a 60-minute budget on two cores buys. `width` 64 is Page's net
(6.57M parameters at 10 classes); the recipes use 16-32. `stem_stride` 2 halves the map in the prep conv
(a learned downsampling for 100x100 images, where a resize would blur a generator's pixel-level traces).

The CIFAR-10 speed records' architecture tricks, each a switch (all off: Page's net as published):
`whiten` puts a frozen 2x2 patch-whitening conv in front (aigc.models.whitening; its filters come from
the training images, set before fit); `dirac` starts every other conv as an identity on its first input
channels (airbench's partial Dirac init: the net starts close to a shallow one); `bn_scale` False drops
BatchNorm's learned scale and `bn_momentum` sets how fast its running statistics follow the batches
(Keras' 0.99 averages ~100 steps; airbench's PyTorch momentum 0.6 is Keras' 0.4).
"""

import keras
import numpy as np
from keras import layers

from aigc.models.common import ParamError, classifier, image_input, l2_or_none
from aigc.models.whitening import NAME as WHITEN, whitening_layer


def conv_bn(x, filters, regularizer, norm, name, strides=1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal",
                      kernel_regularizer=regularizer, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(**norm, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def stage(x, filters, residual, regularizer, norm, name):
    """Conv + 2x2 max pool, then (residual) two convs added back."""
    x = conv_bn(x, filters, regularizer, norm, name)
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    if residual:
        y = conv_bn(x, filters, regularizer, norm, f"{name}_res1")
        y = conv_bn(y, filters, regularizer, norm, f"{name}_res2")
        x = layers.Add(name=f"{name}_add")([x, y])
    return x


def set_dirac(conv: layers.Conv2D) -> None:
    """Make the conv's first min(in, out) filters pass their input channel through unchanged (the rest
    keep their random start). Set on the built weights, so the saved model names only Keras' initializers."""
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    size, _, inputs, outputs = kernel.shape
    kept = min(inputs, outputs)
    kernel[..., :kept] = 0.0
    kernel[size // 2, size // 2, np.arange(kept), np.arange(kept)] = 1.0
    conv.kernel.assign(kernel)


def build(input_shape, num_classes, *, width=64, stem_stride=1, dropout=0.0, l2=0.0,
          whiten=False, dirac=False, bn_scale=True, bn_momentum=0.99):
    """The fast ResNet-9: widths w, 2w, 4w, 8w; see the module docstring."""
    if not isinstance(width, int) or width < 4:
        raise ParamError(f"width: must be an integer >= 4, got {width!r}")
    if stem_stride not in (1, 2):
        raise ParamError(f"stem_stride: must be 1 or 2, got {stem_stride!r}")
    if not 0 <= dropout < 1:
        raise ParamError(f"dropout: must be in [0, 1), got {dropout!r}")
    if not 0 <= bn_momentum < 1:
        raise ParamError(f"bn_momentum: must be in [0, 1), got {bn_momentum!r}")
    for name, value in (("whiten", whiten), ("dirac", dirac), ("bn_scale", bn_scale)):
        if not isinstance(value, bool):
            raise ParamError(f"{name}: must be true or false, got {value!r}")
    regularizer = l2_or_none(l2)
    norm = {"scale": bn_scale, "momentum": bn_momentum}
    inputs, x = image_input(input_shape)
    if whiten:
        x = whitening_layer()(x)
    x = conv_bn(x, width, regularizer, norm, "prep", strides=stem_stride)
    for i, (factor, residual) in enumerate(((2, True), (4, False), (8, True))):
        x = stage(x, width * factor, residual, regularizer, norm, f"layer{i + 1}")
    x = layers.GlobalMaxPooling2D(name="global_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    model = keras.Model(inputs, classifier(x, num_classes, regularizer), name=f"fast_resnet{width}")
    if dirac:
        for layer in model.layers:
            if isinstance(layer, layers.Conv2D) and layer.name != WHITEN:
                set_dirac(layer)
    return model
