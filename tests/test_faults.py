"""No lost data under faults, through a real `mlflow server`: an outage mid-training and a server gone at the
end (outbox + `aigc sync`) in one training process, and kill -9 followed by --resume.

One server for the module (a start costs ~8 s); each test trains in an experiment of its own. An outage is
a proxy in front of it closing its port: a client sees what it sees of a stopped server (connection
refused), and the server is back the moment the proxy opens the port again."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import EPOCH_KEYS, ROOT, TINY_MODEL, artifact_paths, release_store
from servers import SwitchableProxy, failing_proxy, mlflow_server

EXPECTED = {"evaluation/per_class.csv", "evaluation/confusion_matrix.png", "evaluation/curves.png",
            "evaluation/val_probabilities.csv", "config.yaml"}


@pytest.fixture(scope="module")
def server(template_store, tmp_path_factory):
    """A sqlite-backed `mlflow server` shared by the module's tests."""
    folder = tmp_path_factory.mktemp("server")
    backend = f"sqlite:///{shutil.copy(template_store, folder / 'mlflow.db')}"  # migrated already: starts sooner
    with mlflow_server(backend, folder) as started:
        yield started


@pytest.fixture
def proxy(server):
    """The server behind a proxy the test can take down and bring back."""
    with SwitchableProxy(server.uri) as switchable:
        yield switchable


def training_args(data, workdir, epochs) -> list[str]:
    """`train ...`: the tests' smallest model, its cache in `workdir`, in an experiment named after the folder (the
    test's own). Its epochs take well under a second: the tests stop the process (SIGSTOP) where timing matters."""
    overrides = (f"train.epochs={epochs} {TINY_MODEL} data.cache_dir={workdir / 'cache'} "
                 f"tracking.experiment={workdir.name}")
    return ["train", "--data", str(data), "--config", str(ROOT / "configs/demo.yaml"), "--overrides", overrides]


# No backoff between MLflow's retries (aigc's own default waits 1 s, 2 s...): with the server gone every call
# fails at once, and the run's outbox, not the retries, is what these tests are about. The jitter too: urllib3 adds
# up to MLflow's 1 s of it to every wait after the first retry, whatever the factor (~2 s per epoch in an outage).
NO_BACKOFF = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}


def start_training(uri, data, workdir, epochs):
    """`aigc train` as its own process (it must outlive the server, or be killed), in `workdir`."""
    return subprocess.Popen([sys.executable, "-m", "aigc.cli", *training_args(data, workdir, epochs)], cwd=workdir,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri, **NO_BACKOFF},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def follow(process):
    """(lines, reader): the process's output lines so far, read by a thread while the test goes on."""
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    return lines, reader


def wait_for_output(lines, text, process, timeout=300):
    """Until a line containing `text` is printed; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not any(text in line for line in list(lines)):
        assert process.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, f"{text!r} never printed: {''.join(lines)}"
        time.sleep(0.2)


def wait_for_epochs(uri, count, process, workdir, timeout=300):
    """The train run's id once it has logged `count` epochs (the run start_training started in `workdir`)."""
    client, deadline = MlflowClient(uri), time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        experiment = client.get_experiment_by_name(workdir.name)
        if experiment:
            for run in client.search_runs([experiment.experiment_id], "tags.`aigc.kind` = 'train'"):
                if len(client.get_metric_history(run.info.run_id, "epoch/val_loss")) >= count:
                    return run.info.run_id
        time.sleep(0.3)
    raise AssertionError(f"training did not reach {count} epochs")


def assert_complete(uri, run_id, epochs):
    """Every epoch once per key, final metrics once, artifacts, a loadable model, FINISHED."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in EPOCH_KEYS:
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(epochs)), key
    for key in ("final_accuracy", "final_f1_macro", "final_f1_weighted"):
        assert len(client.get_metric_history(run_id, key)) == 1, key
    assert EXPECTED <= set(artifact_paths(uri, run_id))
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.keras.load_model(run.data.tags["aigc.keras_model_uri"])
    finally:
        mlflow.set_tracking_uri(None)
    assert model.output_shape[-1] == 4


def history(uri, run_id) -> list[int]:
    """The epochs of the run the server has, by step."""
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "epoch/val_loss"))


@pytest.mark.slow
def test_training_survives_an_outage_and_keeps_results_for_sync_when_the_server_is_gone_at_the_end(
        server, proxy, dataset_factory, tmp_path, cli, monkeypatch):
    """One training process (a process pays ~12 s of imports) through both faults: the server down mid-training,
    its queued epochs sent once it is back, training going on; then the server gone until the run has ended, its
    results kept in the outbox for `aigc sync`."""
    data, epochs = dataset_factory("gic", classes=4, per_class=40), 12
    process = start_training(proxy.uri, data, tmp_path, epochs)
    lines, reader = follow(process)
    run_id = wait_for_epochs(proxy.uri, 2, process, tmp_path)
    proxy.down()
    # The server is down; training goes on, and the server stays away until an epoch was queued
    wait_for_output(lines, "metric values queued", process)
    process.send_signal(signal.SIGSTOP)  # however fast the machine, epochs are left to reach the server once back
    assert process.poll() is None, "training ended during the outage: raise train.epochs"
    logged = len(history(server.uri, run_id))  # the server itself, behind the closed proxy
    proxy.up()
    process.send_signal(signal.SIGCONT)
    wait_for_epochs(server.uri, logged + 2, process, tmp_path)  # the queued epoch and the next, sent while training
    process.send_signal(signal.SIGSTOP)  # an epoch or more left to finish with the server gone
    sent = history(server.uri, run_id)
    assert sent == list(range(len(sent))) and len(sent) < epochs, sent
    proxy.down()
    process.send_signal(signal.SIGCONT)
    process.wait(timeout=600)
    reader.join(timeout=60)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "aigc sync" in output and (tmp_path / ".aigc-outbox" / run_id / "manifest.json").is_file()
    proxy.up()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.uri)
    monkeypatch.chdir(tmp_path)  # where the outbox is
    synced = cli("sync")
    assert synced.exit_code == 0, synced.output
    assert f"run {run_id}: uploaded" in synced.output
    assert_complete(proxy.uri, run_id, epochs)  # the epochs queued in the outage and those kept for sync
    assert not (tmp_path / ".aigc-outbox" / run_id).exists()
    assert "nothing to upload" in cli("sync").output


@pytest.mark.slow
def test_kill_and_resume_through_the_server(server, dataset_factory, tmp_path, cli, monkeypatch):
    """kill -9 mid-training, then --resume: every epoch once, final metrics once, one train run."""
    data, epochs = dataset_factory("gic", classes=4, per_class=40), 12
    process = start_training(server.uri, data, tmp_path, epochs)
    run_id = wait_for_epochs(server.uri, 2, process, tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait()
    client = MlflowClient(server.uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert len(client.get_metric_history(run_id, "epoch/val_loss")) < epochs
    # As under `mlflow run -P resume=ID`, which makes a run of its own for the resume and hands its child the run and
    # its experiment; in this process (the kill needed one, the resume does not), in the folder of the checkpoints
    experiment = client.get_run(run_id).info.experiment_id
    launcher = client.create_run(experiment).info.run_id
    for key, value in {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_RUN_ID": launcher, **NO_BACKOFF}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(server.uri)
    try:
        mlflow.set_experiment(experiment_id=experiment)  # MLFLOW_EXPERIMENT_ID, over this worker's earlier choice
        resumed = cli(*training_args(data, tmp_path, epochs), "--resume", run_id)
    finally:
        release_store()  # the next test in this worker starts from MLflow's defaults, not from this server
    output = resumed.output
    assert resumed.exit_code == 0, output
    assert f"Epoch 1/{epochs}" not in output  # continued, not restarted
    assert_complete(server.uri, run_id, epochs)
    trains = client.search_runs([client.get_run(run_id).info.experiment_id], "tags.`aigc.kind` = 'train'")
    assert [r.info.run_id for r in trains] == [run_id]
    assert run_id in client.get_run(launcher).data.tags["mlflow.note.content"]


def test_outbox_keeps_only_values_mlflow_can_store(tmp_path):
    from aigc.tracking import Outbox

    box = Outbox("run", root=tmp_path)
    box.history({"loss": [1.5, float("nan"), 0.5]})  # Keras' names, logged as the UI shows them
    box.metrics({"final_accuracy": 0.75, "final_f1_macro": float("inf")})
    kept = [(key, value, step) for key, value, _, step in Outbox("run", root=tmp_path).manifest["metrics"]]
    assert kept == [("epoch/loss", 1.5, 0), ("epoch/loss", 0.5, 2), ("final_accuracy", 0.75, 0)]


def answering(status: int):
    """A real HTTP server on 127.0.0.1 that answers every request with `status` (a proxy in trouble, a quota)."""
    return failing_proxy("http://127.0.0.1:9", "/", status)  # every path holds "/": nothing is forwarded


@pytest.mark.parametrize("status, outage", [(503, True), (502, True), (429, True), (400, False), (404, False)])
def test_sync_keeps_waiting_through_5xx_and_429_and_reports_any_other_answer(status, outage, tmp_path, monkeypatch):
    from aigc import tracking

    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
        monkeypatch.setenv(key, value)  # fast retries here; restored after the test
    monkeypatch.chdir(tmp_path)
    run_id = "0123456789abcdef0123456789abcdef"
    tracking.Outbox(run_id).metrics({"final_accuracy": 0.5})
    with answering(status) as uri:
        mlflow.set_tracking_uri(uri)
        try:
            ((shipped, outcome),) = tracking.sync()
        finally:
            mlflow.set_tracking_uri(None)
    assert shipped == run_id and (tmp_path / ".aigc-outbox" / run_id / "manifest.json").is_file()
    if outage:
        assert outcome == "unreachable"
    else:
        assert outcome.startswith(f"run {run_id}: the tracking server {uri} refused") and f"HTTP {status}" in outcome
