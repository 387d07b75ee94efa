"""4. Prediction: images/s of `aigc predict` writing a submission vs bare model.predict on in-memory tensors."""

from __future__ import annotations

import numpy as np

from aigc import tracking
from aigc.models import build_model
from aigc.steps.predict import predict
from benchmarks.figures import Figure, Result
from benchmarks.timing import interleaved
from benchmarks.workspace import Workspace

TARGET = 0.8


def run(ws: Workspace) -> Result:
    """predict() end to end (resolve, load, cache, run, submission, logging) vs model.predict, interleaved."""
    config = ws.config()
    ws.track(config)
    dataset, cache = ws.data  # the cache exists, as after `preprocess`
    x_test = np.asarray(cache.images("test"), np.float32)
    model_uri = logged_model(config, dataset.num_classes)
    fresh = iter([new_model(config, dataset.num_classes) for _ in range(ws.sizes.repeats)])
    out = ws.root / "submissions" / "submission.csv"
    variants = {
        "aigc": lambda: predict(ws.data_dir, config, model=model_uri, out=out),
        # a fresh model per round: predict traces its graph every time, so bare pays that too
        "bare": lambda: next(fresh).predict(x_test, batch_size=config.data.batch_size, verbose=0),
    }
    timings = interleaved(variants, ws.sizes.repeats)
    rates = {name: len(x_test) / timings.best(name) for name in variants}
    figure = Figure("prediction", "Prediction: aigc predict (PNG folder -> submission) / bare model.predict",
                    rates["aigc"] / rates["bare"], TARGET, "higher",
                    detail=f"({rates['aigc']:.0f} vs {rates['bare']:.0f} images/s)")
    cpu = timings.best_cpu("bare") / timings.best_cpu("aigc")
    return Result("prediction", [figure], {"test_images": len(x_test), "images_per_second": rates,
                                           **timings.to_dict()}, [f"same ratio in CPU seconds: {cpu:.3f}"])


def new_model(config, num_classes: int):
    size = config.data.image_size
    return build_model(config.model.name, (size, size, 3), num_classes, config.model.params)


def logged_model(config, num_classes: int) -> str:
    """An (untrained) ResNet20 logged as train would log it: throughput does not depend on the weights."""
    model = new_model(config, num_classes)
    with tracking.run("train", "bench-prediction-model"):
        sample = np.zeros((2, *model.input_shape[1:]), np.float32)
        return tracking.log_keras_model(model, sample)
