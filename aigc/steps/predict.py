"""The `predict` step: the champion (or any model) -> a submission in the competition's exact format."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from aigc import inference, registry, tracking
from aigc.config import Config
from aigc.data import load_data
from aigc.errors import UserError
from aigc.evaluation import probabilities_table
from aigc.figures import class_counts_figure
from aigc.output import check_output_file


def predict(data_dir: str | Path, config: Config, model: str = "", out: str | Path = "submissions/submission.csv",
            tta: bool = False, allow_local_members: bool = False) -> dict:
    """Predict every test image and write the submission atomically; log a predict run."""
    # the files it reads are never replaced by what it writes
    check_output_file(out, inputs=(data_dir, config.source, config.data.exclude_ids, config.data.relabel, model))
    tracking.connect(config.tracking)
    model_uri, version = registry.resolve(model, config.tracking.registered_model)
    keras_model = inference.load_model(model_uri, allow_local_members, config.ensemble.max_members,
                                       inference.ArchiveLimits(config.model.max_archive_bytes,
                                                               config.model.max_archive_files))
    size = inference.input_size(keras_model)
    dataset, cache = load_data(data_dir, dataclasses.replace(config.data, image_size=size))
    if "test" not in dataset.splits:
        raise UserError(f"{dataset.root}: no test split to predict; the competition folder needs its test images")
    classes = int(keras_model.output_shape[-1])
    if classes != dataset.num_classes:
        raise UserError(f"model {model_uri} predicts {classes} classes but {dataset.root} has "
                        f"{dataset.num_classes}; pick a model trained on this competition")
    test = dataset.splits["test"]
    probabilities = inference.predict_probabilities(keras_model, cache.images("test"), config.data.batch_size, tta)
    predictions = probabilities.argmax(axis=1)
    with tracking.run("predict", f"predict-{dataset.layout.name}") as active:
        tracking.log_params({"model_uri": model_uri, "model_version": version.version if version else "",
                             "tta": tta, "data_dir": str(Path(data_dir).resolve()), "out": str(out)})
        tracking.set_tags({"aigc.layout": dataset.layout.name, "aigc.model_uri": model_uri,
                           "aigc.model_version": f"{version.name}/{version.version}" if version else "",
                           "aigc.source_run_id": version.run_id if version else ""})
        # the model and the test split it predicted, as the run's inputs (the run page links them)
        tracking.link_model(registry.model_id(version) if version else model_uri)
        tracking.log_dataset(test.ids, None, cache.split_digest("test"), str(dataset.root),
                             f"{dataset.root.name}-test", context=tracking.DATASET_CONTEXTS["test"])
        path = dataset.layout.write_submission(dataset, dict(zip(test.ids, predictions)), Path(out))
        tracking.log_file(path, "submission")
        # the probabilities behind it (calibrated when the model is): for blending, thresholds, pseudo-labels
        tracking.log_table(probabilities_table(test.ids, None, probabilities), "test_probabilities.csv")
        predicted = {"predicted": np.bincount(predictions, minlength=dataset.num_classes)}
        tracking.log_metrics(predicted_shares(predicted["predicted"], dataset.class_names))
        tracking.describe_run(f"Predicted {len(test)} test images of {dataset.root.name} with "
                              f"{version.name + ' version ' + str(version.version) if version else model_uri}"
                              f"{' (test-time augmentation)' if tta else ''}; submission {path}.")
        tracking.log_figure(class_counts_figure(predicted, dataset.class_names, "predicted classes"),
                            "predicted_distribution.png")
        run_id = active.info.run_id
    return {"run_id": run_id, "submission": str(path), "rows": len(test), "model_uri": model_uri,
            "version": version.version if version else None}


def predicted_shares(counts: np.ndarray, class_names) -> dict[str, float]:
    """The share of test images predicted as each class, as metrics `predicted/<class>` (one chart group)."""
    total = max(int(counts.sum()), 1)
    return {f"predicted/{tracking.key_part(name)}": count / total
            for name, count in zip(class_names, counts)}
