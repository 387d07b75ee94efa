"""train -> promote -> predict through real tracking servers: a team's PostgreSQL-backed server, and a
server with logins (basic auth) over sqlite.

Each gets one `mlflow server` process (module-scoped: a start costs ~8-20 s) and one train -> promote ->
predict flow against it, the way a team member would use a shared server. A plain server over sqlite is
test_faults' (train, outages, kill and resume through it): its flow here repeated the PostgreSQL one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import requests
import yaml
from mlflow import MlflowClient

from conftest import EPOCH_KEYS, ROOT, TINY_MODEL, artifact_paths, assert_user_error, fabricate_run, invoke_cli, runs
from servers import basic_auth_server, failing_proxy, free_port, mlflow_server, postgres_cluster

NAME = "server-classifier"
EPOCHS = 2
CONFIG = ROOT / "configs/demo.yaml"
OVERRIDES = (f"tracking.registered_model={NAME} tracking.experiment=server-tests "  # no TTA: a bare Keras champion,
             f"train.epochs={EPOCHS} {TINY_MODEL} data.batch_size=16 train.tta=false")  # served by pyfunc
CLIENT_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_RUN_ID")


@contextlib.contextmanager
def postgres_or_fail():
    """The throwaway PostgreSQL; a missing or broken install fails the test (CI installs it), never skips it."""
    try:
        with postgres_cluster() as uri:
            yield uri
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module", params=["postgresql", "basic-auth"])
def server(request, template_store, tmp_path_factory):
    """One real server per backend, shared by the module's tests."""
    folder = tmp_path_factory.mktemp(request.param)
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            backend, start = stack.enter_context(postgres_or_fail()), mlflow_server
        else:  # logins over a copy of the session's migrated store: migrating a new sqlite file takes seconds
            backend, start = f"sqlite:///{shutil.copy(template_store, folder / 'mlflow.db')}", basic_auth_server
        yield stack.enter_context(start(backend, folder))


def run_aigc(client_env: dict[str, str], folder: Path, *args, own_process: bool = False) -> SimpleNamespace:
    """Run `aigc ARGS` with this client environment in `folder`; click Result-like.

    In-process by default, its output what a process prints through Python: click's, MLflow's logger's, and
    any other library's warnings (Python's last-resort handler; pytest's log capture would take them). As its
    own process (own_process=True), C libraries' lines included, for the ~10 s of imports a process pays.
    """
    if not own_process:
        with pytest.MonkeyPatch.context() as patch:
            for key in CLIENT_VARIABLES:
                patch.delenv(key, raising=False)
            for key, value in client_env.items():
                patch.setenv(key, value)
            patch.chdir(folder)
            logging.getLogger().addHandler(logging.lastResort)  # writes to sys.stderr as it is: click's capture
            try:
                done = invoke_cli(*args)
            finally:
                logging.getLogger().removeHandler(logging.lastResort)
        return SimpleNamespace(exit_code=done.exit_code, output=done.output, exception=done.exception)
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES} | client_env
    done = subprocess.run([sys.executable, "-m", "aigc.cli", *map(str, args)], check=False, cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    return SimpleNamespace(exit_code=done.returncode, output=done.stdout + done.stderr, exception=None)


def aigc(server, folder: Path, *args, own_process: bool = False) -> str:
    """Run `aigc ARGS` as a client of `server`; it must succeed. Returns what it printed."""
    result = run_aigc(server.client_env, folder, *args, own_process=own_process)
    assert result.exit_code == 0, f"aigc {args[0]} exited {result.exit_code}:\n{result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture(scope="module")
def flow(server, dataset_factory, tmp_path_factory):
    """train -> promote -> predict (the champion) against the server; their outputs and the submission.

    With a login, train runs as the process a team member starts (everything it prints is searched for
    credentials); the others, and every train without a login, in-process."""
    data, folder = dataset_factory("gic"), tmp_path_factory.mktemp("flow")
    with_login = "MLFLOW_TRACKING_USERNAME" in server.client_env
    trained = aigc(server, folder, "train", "--data", data, "--config", CONFIG, "--overrides", OVERRIDES,
                   own_process=with_login)
    promoted = aigc(server, folder, "promote", "--config", CONFIG, "--overrides", OVERRIDES)
    predicted = aigc(server, folder, "predict", "--data", data, "--config", CONFIG, "--overrides", OVERRIDES,
                     "--model", f"{NAME}@champion", "--out", folder / "submission.csv")
    return {"data": data, "submission": folder / "submission.csv", "outputs": [trained, promoted, predicted],
            "train_run": trained.split("train run ")[1].split(":")[0], "promote": promoted}


@pytest.fixture
def client(server, monkeypatch):
    """This process as a client of the server (credentials included)."""
    for key, value in server.client_env.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(server.uri)
    yield MlflowClient(server.uri)
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_train_run_is_complete_on_the_server(server, flow, client):
    run = client.get_run(flow["train_run"])
    assert run.info.status == "FINISHED" and run.data.tags["aigc.kind"] == "train"
    assert run.data.params["train.epochs"] == str(EPOCHS) and run.data.params["model.name"] == "cnn"
    for key in EPOCH_KEYS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(EPOCHS)), key
    for key in ("final_accuracy", "final_f1_macro", "final_f1_weighted"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
    expected = {"config.yaml"} | {f"evaluation/{name}" for name in (
        "per_class.csv", "confusion_counts.csv", "confusion_matrix.png", "curves.png", "val_probabilities.csv")}
    assert expected <= set(artifact_paths(server.uri, run.info.run_id))
    # Proxied: the client uploaded through the server, which stored the files in its own destination.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert list(server.artifacts.rglob("confusion_counts.csv")), f"nothing under {server.artifacts}"


@pytest.mark.slow
def test_promoted_champion_loads_through_the_server(server, flow, client):
    assert "PROMOTED: there was no champion yet" in flow["promote"]
    version = client.get_model_version_by_alias(NAME, "champion")
    assert version.version == "1" and version.run_id == flow["train_run"]
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    spec = model.metadata.get_input_schema().inputs[0]
    probabilities = np.asarray(model.predict(np.zeros((3, *spec.shape[1:]), dtype=spec.type)))
    assert probabilities.shape == (3, 4) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    # The UI's logged-model page lists the versions from this tag ("Not registered" without it).
    logged = mlflow.get_logged_model(client.get_run(flow["train_run"]).data.tags["aigc.model_uri"].split("/")[-1])
    assert {"name": NAME, "version": "1"} in [{k: str(v) for k, v in link.items()}
                                             for link in json.loads(logged.tags["mlflow.modelVersions"])]
    assert logged.source_run_id == flow["train_run"] and logged.status == "READY"
    assert logged.name == "demo"  # named after the config: the UI's model lists tell models apart
    keras_model = mlflow.keras.load_model(f"runs:/{flow['train_run']}/demo")
    assert keras_model.output_shape[-1] == 4


@pytest.mark.slow
def test_submission_has_the_header_and_every_test_image(server, flow, client):
    rows = list(csv.reader(flow["submission"].read_text().splitlines()))
    test_ids = [row[0] for row in csv.reader((flow["data"] / "test.csv").read_text().splitlines())][1:]
    assert rows[0] == ["Image", "Class"]
    assert [row[0] for row in rows[1:]] == test_ids and {row[1] for row in rows[1:]} <= {"0", "1", "2", "3"}
    (predict_run,) = runs(server.uri, "predict")
    assert predict_run.data.params["model_version"] == "1"
    assert {"submission/submission.csv", "predicted_distribution.png"} <= set(
        artifact_paths(server.uri, predict_run.info.run_id))


@pytest.mark.slow
@pytest.mark.parametrize("server", ["basic-auth"], indirect=True)
def test_basic_auth_refuses_missing_and_wrong_credentials(server):
    username, password = server.client_env["MLFLOW_TRACKING_USERNAME"], server.client_env["MLFLOW_TRACKING_PASSWORD"]
    url = f"{server.uri}/api/2.0/mlflow/experiments/search"
    attempts = {"none": None, "wrong": (username, password + "x"), "right": (username, password)}
    status = {name: requests.post(url, json={"max_results": 1}, auth=auth, timeout=30).status_code
              for name, auth in attempts.items()}
    assert status == {"none": 401, "wrong": 401, "right": 200}


@pytest.mark.slow
@pytest.mark.parametrize("credentials", [{}, {"MLFLOW_TRACKING_USERNAME": "nobody", "MLFLOW_TRACKING_PASSWORD": "x"}],
                         ids=["none", "wrong"])
@pytest.mark.parametrize("server", ["basic-auth"], indirect=True)
def test_refused_credentials_end_with_one_clear_message(server, credentials, tmp_path):
    result = run_aigc({"MLFLOW_TRACKING_URI": server.uri, **credentials}, tmp_path, "promote", "--config", CONFIG)
    assert_user_error(result, server.uri, "MLFLOW_TRACKING_USERNAME")


@pytest.mark.slow
@pytest.mark.parametrize("server", ["basic-auth"], indirect=True)
def test_credentials_appear_in_no_run_output_or_artifact(server, flow, client):
    every_run, username = runs(server.uri), server.client_env["MLFLOW_TRACKING_USERNAME"]
    assert {r.data.tags.get("aigc.kind") for r in every_run} == {"train", "promote", "predict"}
    # The server records who ran what: the account name, never its password, is the runs' mlflow.user.
    assert {r.data.tags["mlflow.user"] for r in every_run} == {username}
    pairs = [pair for r in every_run for pair in (*r.data.params.items(), *r.data.tags.items())]
    for version in client.search_model_versions(f"name='{NAME}'"):
        pairs += version.tags.items()
    for model in mlflow.search_logged_models(experiment_ids=list({r.info.experiment_id for r in every_run}),
                                             output_format="list"):
        pairs += [*model.params.items(), *model.tags.items()]
    values = [value for key, value in pairs if key != "mlflow.user"]
    # Every artifact as the server stored it (run and logged-model files alike).
    artifacts = {p: p.read_bytes() for p in server.artifacts.rglob("*") if p.is_file()}
    assert len(artifacts) > 10
    store = Path(server.backend.removeprefix("sqlite:///")).read_bytes()  # every run, param, tag, metric
    for secret in [username, *server.secrets]:
        assert not [v for v in values if secret in v], "a param or tag holds a credential"
        assert not [o for o in flow["outputs"] if secret in o], "the CLI printed a credential"
        leaks = [str(path) for path, content in artifacts.items() if secret.encode() in content]
        assert not leaks, f"credential stored in {leaks}"
    assert not [secret for secret in server.secrets if secret.encode() in store], "a password is in the run store"


# --- what a failed tracking call means: an outage waits for `aigc sync`, a refusal is one clear error ----------

@pytest.fixture
def locked_run(server):
    """A run in an experiment the admin made; the test's account (default permission READ) may not write to it."""
    admin = ("admin", server.secrets[1])
    api = f"{server.uri}/api/2.0/mlflow"
    name = f"locked-{os.urandom(4).hex()}"
    experiment = requests.post(f"{api}/experiments/create", json={"name": name}, auth=admin, timeout=30)
    experiment.raise_for_status()
    created = requests.post(f"{api}/runs/create", json={"experiment_id": experiment.json()["experiment_id"]},
                            auth=admin, timeout=30)
    created.raise_for_status()
    return name, created.json()["run"]["info"]["run_id"]


def outbox_for(run_id: str, folder: Path) -> Path:
    """Results of `run_id` waiting in folder/.aigc-outbox, as a train run leaves them when the server is gone."""
    from aigc.tracking import Outbox

    box = Outbox(run_id, root=folder / ".aigc-outbox")
    box.metrics({"final_accuracy": 0.5})
    box.tags({"aigc.best_epoch": 0})
    box.status("FINISHED")
    return box.folder


@pytest.mark.slow
@pytest.mark.parametrize("server", ["basic-auth"], indirect=True)
def test_sync_reports_a_refusal_as_such_and_an_outage_as_unreachable(server, locked_run, tmp_path):
    _, run_id = locked_run
    kept = outbox_for(run_id, tmp_path)
    refused = run_aigc(server.client_env, tmp_path, "sync")
    assert_user_error(refused, f"run {run_id}", "HTTP 403", "ask the server's admin")
    assert "unreachable" not in refused.output and (kept / "manifest.json").is_file()

    # The same outbox while the server is away (nothing listens on the port), credentials inside the URI.
    username, password = server.client_env["MLFLOW_TRACKING_USERNAME"], server.client_env["MLFLOW_TRACKING_PASSWORD"]
    away = with_credentials(f"http://127.0.0.1:{free_port()}", username, password)
    outage = run_aigc({"MLFLOW_TRACKING_URI": away}, tmp_path, "sync")
    assert_user_error(outage, f"run {run_id}: server still unreachable, kept", "http://***@127.0.0.1:")
    assert password not in outage.output and username not in outage.output
    assert (kept / "manifest.json").is_file()

    # Back, with a run of this account's own: uploaded, and MLflow's "View run" link does not show the URI.
    shutil.rmtree(kept)
    back_uri = with_credentials(server.uri, username, password)
    own = MlflowClient(back_uri)
    run_id = own.create_run(own.create_experiment(f"own-{os.urandom(4).hex()}")).info.run_id
    outbox_for(run_id, tmp_path)
    back = run_aigc({"MLFLOW_TRACKING_URI": back_uri}, tmp_path, "sync")
    assert back.exit_code == 0 and f"run {run_id}: uploaded" in back.output, back.output
    assert password not in back.output and username not in back.output
    assert own.get_run(run_id).info.status == "FINISHED"


def with_credentials(uri: str, username: str, password: str) -> str:
    """http://user:password@host:port: a tracking URI with the login inside (requests reads it from there)."""
    return uri.replace("://", f"://{username}:{password}@", 1)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["basic-auth"], indirect=True)
def test_a_step_the_server_refuses_ends_with_one_clear_message(server, locked_run, dataset_factory, tmp_path):
    experiment, _ = locked_run  # readable, not writable: the step's first write (its run) is refused
    result = run_aigc(server.client_env, tmp_path, "preprocess", "--data", dataset_factory("gic"), "--config", CONFIG,
                      "--overrides", f"tracking.experiment={experiment}")
    assert_user_error(result, "preprocess run", "HTTP 403", "ask the server's admin")
    assert server.uri in result.output


@pytest.mark.slow
@pytest.mark.parametrize("server", ["basic-auth"], indirect=True)
def test_a_registry_that_refuses_or_fails_stops_promote_and_moves_no_alias(server, client, tmp_path):
    """Reading the champion is refused (403) or fails (500): that is not "there was no champion yet". Promote
    stops with one message before its run starts, and every alias stays where it was. The real server sits
    behind a proxy that answers for its registry (basic auth grants no "no permission" on a model since 3.17)."""
    import numpy as np

    name, experiment = f"guarded-{os.urandom(4).hex()}", f"guarded-{os.urandom(4).hex()}"
    ids, labels = [f"img-{n}" for n in range(40)], np.arange(40) % 4
    right = lambda count: np.eye(4)[np.where(np.arange(40) < count, labels, (labels + 1) % 4)]  # noqa: E731
    made = [fabricate_run("train", ids, labels, right(count), experiment=experiment, registered_model=name)
            for count in (20, 39)]
    overrides = f"tracking.registered_model={name} tracking.experiment={experiment}"
    first = run_aigc(server.client_env, tmp_path, "promote", "--config", CONFIG, "--overrides", overrides,
                     "--run", made[0])
    assert "PROMOTED" in first.output, first.output
    before = client.get_registered_model(name).aliases
    for status, fragments in ((403, ("HTTP 403", "ask the server's admin")), (500, ("unreachable",))):
        with failing_proxy(server.uri, "registered-models/get", status) as proxy:
            env = {**server.client_env, "MLFLOW_TRACKING_URI": proxy, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
            mlflow.set_tracking_uri(proxy)  # `client` set the server itself, which would outrank the variable
            try:
                result = run_aigc(env, tmp_path, "promote", "--config", CONFIG, "--overrides", overrides,
                                  "--run", made[1])
            finally:
                mlflow.set_tracking_uri(server.uri)
        assert_user_error(result, f"alias champion of model {name}", *fragments)
        assert client.get_registered_model(name).aliases == before and sorted(before) == ["challenger", "champion"]
    promotes = [r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
                if r.data.tags.get("aigc.kind") == "promote"]
    assert len(promotes) == 1  # the refused and the failed promote started no run


@pytest.mark.slow
def test_a_tracking_uri_with_credentials_is_never_printed(tmp_path):
    away = f"http://someone:hunter2-secret@127.0.0.1:{free_port()}"
    result = run_aigc({"MLFLOW_TRACKING_URI": away}, tmp_path, "promote", "--config", CONFIG)
    assert_user_error(result, "http://***@127.0.0.1:", "not reachable")
    assert "hunter2" not in result.output and "someone" not in result.output


# --- docker/: the configuration the tests above can't start here (no Docker engine, no cluster) --------

def test_kubernetes_project_runs_the_root_projects_commands():
    """docker/kubernetes mirrors the root MLproject's train/tune; its Job gets back the exact arguments."""
    from mlflow.projects._project_spec import load_project  # MLflow 3.17.2 has no public reader of an MLproject

    root, cluster = load_project(ROOT), load_project(ROOT / "docker/kubernetes")
    params = {"data": "/data", "overrides": "train.epochs=3 data.batch_size=32"}
    probe = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
    for name in ("train", "tune"):
        ours, theirs = cluster.get_entry_point(name), root.get_entry_point(name)
        assert {k: (p.type, p.default) for k, p in ours.parameters.items()} == {
            k: (p.type, p.default) for k, p in theirs.parameters.items()}
        assert ours.command == f"sh docker/kubernetes/unquote.sh {theirs.command}"
        # The Job's argv, as mlflow.projects.kubernetes._get_run_command builds it (quoted, no shell).
        argv = [shlex.quote(token) for token in shlex.split(ours.compute_command(params, None))]
        done = subprocess.run(["sh", *argv[1:2], *map(shlex.quote, probe), *argv[4:]], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        assert json.loads(done.stdout) == shlex.split(theirs.compute_command(params, None))[2:]
    assert cluster.docker_env == {"image": "aigc:latest"}
    # the backend config MLflow's Kubernetes backend reads; its template path is relative to where `mlflow run` starts
    config = json.loads((ROOT / "docker/kubernetes_config.json").read_text())
    assert config["repository-uri"]  # required (kube-context is optional: the current one)
    job = yaml.safe_load((ROOT / config["kube-job-template-path"]).read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert job["metadata"]["namespace"] and container["workingDir"] == "/app"


def test_compose_stack_reads_every_secret_from_a_file():
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    services, declared = compose["services"], compose["secrets"]
    assert all(s["file"].startswith("${AIGC_SECRETS:?") for s in declared.values())  # required, no default
    for name, service in services.items():
        assert set(service.get("secrets", [])) <= set(declared), name
        assert "healthcheck" in service or service.get("restart") == "no" or "profiles" in service, name
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "_KEY")):  # a path or passed through, never a value
                assert value is None or str(value).startswith("/run/secrets/"), f"{name}: {key}"
    script = (ROOT / "docker/mlflow-server.sh").read_text()
    assert all(part in script for part in ("postgresql://", "s3://", "--app-name basic-auth", "/run/secrets"))


def compose_command() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose` (v1), whichever works here."""
    version = ["docker", "compose", "version"]
    if shutil.which("docker") and subprocess.run(version, check=False, capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_command() is None, reason="no docker compose client here")
def test_compose_file_validates(tmp_path):
    for name in yaml.safe_load((ROOT / "docker/compose.yaml").read_text())["secrets"]:
        (tmp_path / name).write_text("not-a-secret")
    env = {**os.environ, "AIGC_SECRETS": str(tmp_path)}
    command = [*compose_command(), "-f", ROOT / "docker/compose.yaml", "--profile", "trainer", "config", "--services"]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"postgres", "minio", "create-bucket", "mlflow", "trainer"}
