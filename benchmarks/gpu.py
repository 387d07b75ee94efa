"""7. The GPU path: the config switches take effect; on a GPU, ResNet20 training images/s.

Checked everywhere (CPU too), through aigc's own set_seed / build_model / with_augmenter /
compile_model, as `train` calls them: `train.mixed_precision`, `train.jit_compile` and
`augment.on_device`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from aigc import training
from aigc.data.pipeline import train_dataset
from aigc.models import build_model, keras_message
from benchmarks.figures import Figure, Result
from benchmarks.workspace import Workspace

SWITCHES = {"train.mixed_precision": True, "train.jit_compile": True}
ON_DEVICE = {"augment.on_device": True}
EPOCHS = 3  # the first traces and compiles: the rate is the best of the others
VARIANTS = {  # name -> config overrides
    "float32": {},
    "mixed_float16 + XLA": SWITCHES,
    "mixed_float16 + XLA + on-device augmentation": {**SWITCHES, **ON_DEVICE},
    "mixed_float16 + XLA, no augmentation": {**SWITCHES, "augment": {}},
}


def run(ws: Workspace) -> Result:
    switches = check_switches(ws)
    notes = [f"config switch {name}: {state}" for name, state in switches.items()]
    if not tf.config.list_physical_devices("GPU"):
        why = "no GPU (tf.config.list_physical_devices('GPU') is empty): ResNet20 GPU images/s not measured"
        return Result("gpu", data={"switches": switches}, notes=notes, skipped=why)
    return measure(ws, switches, notes)


def measure(ws: Workspace, switches: dict, notes: list[str]) -> Result:
    """ResNet20 training images/s for each variant, on the shared dataset's cache."""
    rates, failures = {}, {}
    for name, overrides in VARIANTS.items():
        try:
            rates[name] = train_rate(ws, overrides)
        except Exception as error:  # noqa: BLE001 - one broken combination must not hide the others
            failures[name] = f"{type(error).__name__}: {keras_message(error)[:300]}"
    figures = [Figure(f"gpu_{i}", f"GPU: ResNet20 training images/s, {name}", rate, None, unit=" images/s")
               for i, (name, rate) in enumerate(rates.items())]
    notes += [f"FAILED {name}: {why}" for name, why in failures.items()]
    return Result("gpu", figures, {"switches": switches, "images_per_second": rates, "failures": failures,
                                   "devices": [d.name for d in tf.config.list_physical_devices("GPU")]}, notes)


def check_switches(ws: Workspace) -> dict[str, str]:
    """What took effect in models built from configs with the switches on."""
    try:
        _, fitted = models(ws.config(**SWITCHES), num_classes=100)
        conv = next(layer for layer in fitted.layers if isinstance(layer, keras.layers.Conv2D))
        _, augmented = models(ws.config(**SWITCHES, **ON_DEVICE), num_classes=100)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # set_seed made it global
    inside = any(layer.name == "augmenter" for layer in augmented.layers)
    return {"train.mixed_precision": f"{'on' if conv.dtype_policy.name == 'mixed_float16' else 'OFF'} "
                                     f"(conv policy {conv.dtype_policy.name}, output {fitted.outputs[0].dtype})",
            "train.jit_compile": "on" if fitted.jit_compile is True else "OFF",
            "augment.on_device": f"{'on: augmenter inside the fitted model' if inside else 'OFF'} (XLA "
                                 f"{'on' if augmented.jit_compile else 'off: Keras disables it for random layers'})"}


def models(config, num_classes: int):
    """(model, the compiled model to fit) exactly as the train step makes them."""
    training.set_seed(config.train)  # applies train.mixed_precision
    size = config.data.image_size
    model = build_model(config.model.name, (size, size, 3), num_classes, config.model.params)
    fitted = training.with_augmenter(model, config.augment, config.train.seed)
    return model, training.compile_model(fitted, config.train)


def train_rate(ws: Workspace, overrides: dict) -> float:
    """Best images/s of the epochs after the first, from aigc's EpochTimer."""
    config = ws.config(**overrides)
    dataset, cache = ws.data
    labels = dataset.splits["train"].labels
    try:
        _, fitted = models(config, dataset.num_classes)
        ds = train_dataset(cache.images("train"), labels, dataset.num_classes, config.data, config.augment,
                           config.train.seed)
        history = fitted.fit(ds, epochs=EPOCHS, callbacks=[training.EpochTimer(len(labels))], verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return max(history.history["images_per_second"][1:])
