"""The model zoo: one builder per family, looked up by the config's `model.name`.

Builders take `(input_shape, num_classes, **params)` and return an uncompiled `keras.Model`
that expects raw pixels in [0, 255] and outputs class probabilities. They know nothing of
data or MLflow.
"""

import contextlib
import inspect
import traceback

import keras

from aigc.errors import UserError
from aigc.models import branch_cnn, cnn, fast_resnet, lstm, resnet, tunable_cnn
from aigc.models.common import ParamError

MODELS = {
    "resnet": resnet.build,
    "cnn": cnn.build,
    "lstm": lstm.build,
    "branch_cnn": branch_cnn.build,
    "tunable_cnn": tunable_cnn.build,
    "fast_resnet": fast_resnet.build,
}


def accepted_params(builder):
    """The keyword-only parameters of a builder, in declaration order."""
    return [
        name
        for name, parameter in inspect.signature(builder).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]


@contextlib.contextmanager
def plain_keras_errors():
    """Keras errors as the layer raised them: no 'Exception encountered when calling', colour codes
    or 'Arguments received' dump (Keras adds those only while traceback filtering is on)."""
    was_on = keras.config.is_traceback_filtering_enabled()
    keras.config.disable_traceback_filtering()
    try:
        yield
    finally:
        if was_on:
            keras.config.enable_traceback_filtering()


def keras_message(error):
    """An error raised under `plain_keras_errors` in one line, prefixed with the innermost Keras layer it came from."""
    layers = [frame.f_locals.get("self") for frame, _ in traceback.walk_tb(error.__traceback__)]
    layers = [layer for layer in layers if isinstance(layer, keras.layers.Layer)]
    text = " ".join(str(error).split()).rstrip(".")
    return f"{layers[-1].name}: {text}" if layers else text


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
        with plain_keras_errors():
            return builder(tuple(input_shape), num_classes, **params)
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
