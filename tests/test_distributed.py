"""Multi-worker training: two `aigc train` processes joined by TF_CONFIG (MultiWorkerMirroredStrategy
on CPU). The chief logs one complete run; the worker trains its share and records nothing."""

import json
import os
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import EPOCH_KEYS, ROOT, TINY_MODEL, runs
from servers import free_port

EPOCHS = 3
WRITTEN = ("aigc-runs", ".aigc-outbox", ".aigc-checkpoints")  # what a train step may leave in its folder


def worker(index, cluster, data, folder, store):
    """`aigc train` as worker `index` of `cluster`, in its own folder, tracking into its own sqlite store.

    Separate stores, so that anything the worker wrote to MLflow shows up in its own store.
    """
    folder.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_RUN_ID"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{store}", CUDA_VISIBLE_DEVICES="",
               TF_CONFIG=json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}))
    overrides = (f"train.epochs={EPOCHS} {TINY_MODEL} data.image_size=16 data.batch_size=8 "
                 f"tracking.log_system_metrics=false data.cache_dir={folder / 'cache'}")
    command = [sys.executable, "-m", "aigc.cli", "train", "--data", str(data), "--config",
               str(ROOT / "configs/demo.yaml"), "--overrides", overrides]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chief_logs_one_complete_run_and_the_worker_logs_nothing(template_store, dataset_factory, tmp_path):
    data = dataset_factory("gic")
    stores = [tmp_path / f"store-{index}.db" for index in range(2)]
    for store in stores:
        shutil.copy(template_store, store)
    cluster = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    folders = [tmp_path / f"worker-{index}" for index in range(2)]
    processes = [worker(index, cluster, data, folders[index], stores[index]) for index in range(2)]
    outputs = [process.communicate(timeout=540)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]

    chief_uri, worker_uri = (f"sqlite:///{store}" for store in stores)
    (run,) = runs(chief_uri)  # worker 0 is the chief: one run, complete
    assert run.info.status == "FINISHED" and run.data.tags["aigc.kind"] == "train"
    client = MlflowClient(chief_uri)
    for key in EPOCH_KEYS:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(EPOCHS)), key
    assert "aigc.model_uri" in run.data.tags and "final_accuracy" in run.data.metrics
    # The chief validated on every image of the validation split, in its order (not on its shard, nor
    # on the workers' shards gathered): one process predicting with the logged model gets the same.
    from aigc.data.cache import Cache

    (cache_dir,) = (folders[0] / "cache").iterdir()
    images = Cache(cache_dir).images("val").astype("float32")
    try:
        mlflow.set_tracking_uri(chief_uri)
        predicted = mlflow.keras.load_model(run.data.tags["aigc.keras_model_uri"]).predict(images, verbose=0)
        table = lambda path: pd.read_csv(  # noqa: E731
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f"evaluation/{path}"))
        scored = table("val_probabilities.csv")  # what the final scores are of
        # Shipped with a TTA set (the training decides: hflip helps or not), the final scores are the model's with
        # it, cross-fitted; the bare Keras model's own probabilities are logged beside them
        bare = run.data.tags["aigc.model_uri"] != run.data.tags["aigc.keras_model_uri"]
        logged = table("val_probabilities_bare.csv") if bare else scored
    finally:
        mlflow.set_tracking_uri(None)
    columns = [f"p_{i}" for i in range(predicted.shape[1])]
    np.testing.assert_allclose(logged[columns].to_numpy(), predicted, atol=1e-4)
    assert logged[["id", "label"]].equals(scored[["id", "label"]])  # the same images, in the same order
    accuracy = np.mean(scored[columns].to_numpy().argmax(1) == scored["label"].to_numpy())
    assert np.isclose(run.data.metrics["final_accuracy"], accuracy)

    assert runs(worker_uri) == []  # the worker: no run, no experiment, no local results
    assert [e.name for e in MlflowClient(worker_uri).search_experiments()] == ["Default"]
    assert not [name for name in WRITTEN if (folders[1] / name).exists()]
    assert not (folders[1] / "mlflow.db").exists()
