"""The model zoo: one builder per family, looked up by the config's `model.name`.

Builders take `(input_shape, num_classes, **params)` and return an uncompiled `keras.Model`
that expects raw pixels in [0, 255] and outputs class probabilities. They know nothing of
data or MLflow.
"""

import inspect
import re

import keras

from aigc.errors import UserError
from aigc.models import branch_cnn, cnn, lstm, resnet, tunable_cnn
from aigc.models.common import ParamError

MODELS = {
    "resnet": resnet.build,
    "cnn": cnn.build,
    "lstm": lstm.build,
    "branch_cnn": branch_cnn.build,
    "tunable_cnn": tunable_cnn.build,
}

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
LAYER_CALL = re.compile(r"Exception encountered when calling (\w+)\.call\(\)\.")


def accepted_params(builder):
    """The keyword-only parameters of a builder, in declaration order."""
    return [
        name
        for name, parameter in inspect.signature(builder).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def keras_message(error):
    """Keras's error text without colour codes or the 'Arguments received' dump."""
    text = ANSI_ESCAPE.sub("", str(error))
    text = text.split("Arguments received by", 1)[0]
    layer = LAYER_CALL.search(text)
    text = LAYER_CALL.sub("", text)
    text = " ".join(text.split()).rstrip(".")
    return f"{layer.group(1)}: {text}" if layer else text


def does_not_fit(message):
    """True when Keras complained that a layer's output would be empty (image too small)."""
    return "zero or negative" in message or "negative dimension" in message.lower()


def build_model(name, input_shape, num_classes, params=None):
    """Build model `name` with keyword `params`, turning every config mistake into a UserError."""
    if name not in MODELS:
        raise UserError(
            f"model.name: unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        )
    builder = MODELS[name]
    params = dict(params or {})
    accepted = accepted_params(builder)
    for key in params:
        if key not in accepted:
            raise UserError(
                f"model.params.{key}: model {name} has no parameter {key!r}; accepted: {', '.join(accepted)}"
            )
    height, width = input_shape[0], input_shape[1]
    try:
        model = builder(tuple(input_shape), num_classes, **params)
    except ParamError as error:
        raise UserError(f"model.params.{error}") from error
    except (ValueError, TypeError) as error:
        message = keras_message(error)
        if does_not_fit(message):
            raise UserError(
                f"model {name} does not fit image size {height}x{width}: {message}; "
                "use a larger data.image_size or smaller pooling"
            ) from error
        raise UserError(
            f"model.params: model {name} cannot be built with {params}: {message}"
        ) from error
    if keras.mixed_precision.global_policy().compute_dtype == "float16":
        # Keras's advice under mixed precision: keep the softmax output in float32.
        outputs = keras.layers.Activation("linear", dtype="float32", name="float32_output")(model.output)
        model = keras.Model(model.input, outputs, name=model.name)
    return model
