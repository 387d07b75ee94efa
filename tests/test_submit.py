"""`aigc submit`: a predict run's file -> a fake Kaggle endpoint -> the public score on the runs and the version.

The official `kaggle` package runs unmodified: KAGGLE_API_ENVIRONMENT=LOCALHOST points it at
http://localhost and HTTP_PROXY routes that to FakeKaggle on 127.0.0.1 (a random port). Submits run as
subprocesses because the package reads its environment when first imported.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import ROOT, TINY_MODEL, artifact_paths, assert_user_error, runs

pytestmark = pytest.mark.slow  # each submit is a process of its own, talking to a fake Kaggle over HTTP

NAME = "submit-classifier"
COMMON = f"tracking.registered_model={NAME} tracking.experiment=submit-tests {TINY_MODEL} data.batch_size=16"
USER, KEY, TOKEN = "kaggler", "kgl-secret-7f3a9c21e5d84b60", "KGAT_3e1f0c9d2b7a4865a1c0ffee"
BASIC, BEARER = "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode(), f"Bearer {TOKEN}"
SLUG = "gic-unibuc-dl-2023"
SERVICE = "/api/v1/competitions.CompetitionApiService/"


def aigc(*args):
    from click.testing import CliRunner

    from aigc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


class FakeKaggle(ThreadingHTTPServer):
    """The three calls a submit makes (start upload, PUT the file, create) and the submissions list.

    A submission stays PENDING for `looks_before_score` listings, then is COMPLETE with `score`.
    """

    def __init__(self, looks_before_score=1, score="0.91234"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.looks_before_score, self.score = looks_before_score, score
        self.uploads, self.submissions, self.calls = {}, [], []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_PUT(self):  # the upload URL StartSubmissionUpload handed out
        fake, path = self.server, urlsplit(self.path).path
        fake.calls.append(("PUT", path))
        fake.uploads[path.rsplit("/", 1)[-1]] = self._body()
        self._reply(200, {})

    def do_POST(self):
        fake, path = self.server, urlsplit(self.path).path  # a proxy gets the absolute URL
        request = json.loads(self._body() or b"{}")
        fake.calls.append(("POST", path))
        if self.headers.get("Authorization") not in (BASIC, BEARER):
            return self._reply(401, {"code": 401, "message": "Unauthenticated"})
        if path.endswith("/security.OAuthService/IntrospectToken"):  # how the package checks a token
            return self._reply(200, {"active": request.get("token") == TOKEN, "username": USER})
        if request.get("competitionName") != SLUG:
            return self._reply(404, {"code": 404, "message": "Competition not found"})
        call = path.removeprefix(SERVICE)
        if call == "StartSubmissionUpload":
            token = f"blob-{len(fake.uploads) + 1}"
            return self._reply(200, {"token": token, "createUrl": f"http://localhost/upload/{token}"})
        if call == "CreateSubmission":
            ref = 4200 + len(fake.submissions)
            fake.submissions.append({"ref": ref, "date": "2026-12-02T10:00:00.000Z", "looks": 0,
                                     "description": request.get("submissionDescription", ""),
                                     "blob": request["blobFileTokens"]})
            return self._reply(200, {"message": "Successfully submitted", "ref": ref})
        if call == "ListSubmissions":
            listed = []
            for item in fake.submissions:
                item["looks"] += 1
                done = item["looks"] > fake.looks_before_score
                listed.append({"ref": item["ref"], "date": item["date"], "description": item["description"],
                               "status": "COMPLETE" if done else "PENDING",
                               **({"publicScore": fake.score} if done else {})})
            return self._reply(200, {"submissions": listed})
        self._reply(404, {"code": 404, "message": f"no fake for {call}"})


def submit(store_dir: Path, *args, proxy: str, credentials="key"):
    """`aigc submit ARGS` in a fresh process whose only Kaggle credentials are the test's (if any)."""
    import matplotlib

    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and "proxy" not in k.lower()}
    home = store_dir / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / "kaggle"), KAGGLE_API_ENVIRONMENT="LOCALHOST",
               HTTP_PROXY=proxy, http_proxy=proxy, NO_PROXY="", no_proxy="", PYTHONPATH=str(ROOT),
               MPLCONFIGDIR=matplotlib.get_configdir())
    if credentials == "key":
        env.update(KAGGLE_USERNAME=USER, KAGGLE_KEY=KEY)
    elif credentials == "token":  # what kaggle.com/settings/api hands out today
        env.update(KAGGLE_API_TOKEN=TOKEN)
    return subprocess.run([sys.executable, "-m", "aigc.cli", "submit", "--config", ROOT / "configs/demo.yaml",
                           "--overrides", COMMON, *map(str, args)],
                          env=env, cwd=store_dir, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def predicted(module_store, dataset_factory, tmp_path_factory):
    """One trained, promoted model (version 1) and two predict runs of it (one per submit scenario)."""
    data = dataset_factory("gic")
    config = ROOT / "configs/demo.yaml"
    trained = aigc("train", "--data", data, "--config", config, "--overrides", f"{COMMON} train.epochs=1")
    assert trained.exit_code == 0, trained.output
    promoted = aigc("promote", "--config", config, "--overrides", COMMON)
    assert promoted.exit_code == 0, promoted.output
    out = tmp_path_factory.mktemp("submissions")
    predicts = {}
    for scenario in ("scored", "refused", "pending"):
        result = aigc("predict", "--data", data, "--config", config, "--overrides", COMMON,
                      "--out", out / f"{scenario}.csv")
        assert result.exit_code == 0, result.output
        predicts[scenario] = result.output.split("predict run ")[1].split(":")[0]
    return {"uri": module_store, "dir": Path.cwd(), "train": trained.output.split("train run ")[1].split(":")[0],
            "predict": predicts, "out": out}


def _latest(uri, run_id):
    return MlflowClient(uri).get_run(run_id).data


def test_submit_records_the_public_score_on_runs_version_and_leaderboard(predicted):
    uri, predict_id = predicted["uri"], predicted["predict"]["scored"]
    fake = FakeKaggle(looks_before_score=1)
    done = submit(predicted["dir"], "--competition", SLUG, "--run", predict_id, "-m", "resnet 1 epoch",
                  "--wait", 30, proxy=fake.proxy)
    assert done.returncode == 0, done.stderr
    assert f"submitted to {SLUG} as 4200; public score 0.91234" in done.stdout
    # Kaggle got exactly the file the predict run recorded, with the message; the score took two looks
    sent = fake.uploads[fake.submissions[0]["blob"]]
    assert sent == (predicted["out"] / "scored.csv").read_bytes()
    assert fake.submissions[0]["description"] == "resnet 1 epoch"
    assert len([c for c in fake.calls if c[1].endswith("ListSubmissions")]) >= 2
    predict = _latest(uri, predict_id)
    assert predict.metrics["public_score"] == pytest.approx(0.91234)
    assert {k: predict.tags[f"aigc.kaggle.{k}"] for k in ("competition", "ref", "message", "status")} == {
        "competition": SLUG, "ref": "4200", "message": "resnet 1 epoch", "status": "COMPLETE"}
    assert predict.tags["aigc.kaggle.date"].startswith("2026-12-02T10:00")
    assert _latest(uri, predicted["train"]).metrics["public_score"] == pytest.approx(0.91234)
    version = MlflowClient(uri).get_model_version(NAME, "1")
    assert version.tags["aigc.public_score"] == "0.91234" and version.tags["aigc.kaggle.ref"] == "4200"
    # the experiment's leaderboard run holds the CV-vs-public figure and the table behind it
    (board,) = runs(uri, "leaderboard")
    assert {"cv_vs_public.png", "submissions.csv"} <= set(artifact_paths(uri, board.info.run_id))
    png = Path(MlflowClient(uri).download_artifacts(board.info.run_id, "cv_vs_public.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the gap judged: a public score above a 1-epoch model's local interval says the local score was pessimistic
    submissions = pd.read_csv(MlflowClient(uri).download_artifacts(board.info.run_id, "submissions.csv"))
    (row,) = submissions.itertuples()
    local = _latest(uri, predicted["train"]).metrics
    assert (row.local_low, row.local_high) == pytest.approx((local["final_f1_weighted_low"],
                                                            local["final_f1_weighted_high"]))
    expected = (f"local score pessimistic by {100 * (0.91234 - row.validation):.1f} points" if 0.91234 > row.local_high
                else "public score inside the local 95 % interval")
    assert row.gap == expected and expected in board.data.tags["mlflow.note.content"]
    table = aigc("runs", "--config", ROOT / "configs/demo.yaml", "--overrides", COMMON)
    header, row = table.output.splitlines()[1:3]
    assert header.split()[4:8] == ["f1_weighted", "95%_interval", "vs_leader", "public"] and "0.9123" in row.split()
    _assert_no_credentials_anywhere(uri, done.stdout + done.stderr)


def _assert_no_credentials_anywhere(uri, output):
    """The key (raw or Basic-auth encoded) or token in no param, tag, metric name, artifact, version tag, output."""
    secrets = (KEY, BASIC.split()[1], TOKEN)
    client, seen = MlflowClient(uri), [output]
    for run in runs(uri):
        seen += [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(list(run.data.metrics))]
        folder = Path(client.download_artifacts(run.info.run_id, ""))
        seen += [path.read_bytes().decode("latin-1") for path in folder.rglob("*") if path.is_file()]
    for model in client.search_registered_models():
        seen += [json.dumps(v.tags) for v in client.search_model_versions(f"name='{model.name}'")]
        seen.append(json.dumps(model.tags))
    leaks = [text[:80] for text in seen for secret in secrets if secret in text]
    assert not leaks, leaks


def test_without_credentials_or_network_one_message_and_nothing_lost(predicted):
    uri, predict_id = predicted["uri"], predicted["predict"]["refused"]
    local = predicted["out"] / "refused.csv"
    before = (local.read_bytes(), local.stat().st_mtime_ns, _latest(uri, predict_id).tags)
    fake = FakeKaggle()
    no_credentials = submit(predicted["dir"], "--competition", SLUG, "--run", predict_id, "-m", "x",
                            proxy=fake.proxy, credentials=None)
    with socket.socket() as closed:  # a port nothing listens on: the network is down
        closed.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}"
    offline = submit(predicted["dir"], "--competition", SLUG, "--run", predict_id, "-m", "x", proxy=unreachable)
    wrong_slug = submit(predicted["dir"], "--competition", "no-such-competition", "--run", predict_id, "-m", "x",
                        proxy=fake.proxy)
    for result, fragment in ((no_credentials, "no Kaggle credentials found: create an API token"),
                             (offline, "Kaggle is not reachable"), (wrong_slug, "competition not found")):
        assert result.returncode == 2, result.stderr
        assert fragment in result.stderr and "nothing was submitted" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not fake.submissions and not fake.uploads
    assert (local.read_bytes(), local.stat().st_mtime_ns, _latest(uri, predict_id).tags) == before


def test_a_slow_score_keeps_the_reference_and_can_be_recorded_by_hand(predicted):
    uri, predict_id = predicted["uri"], predicted["predict"]["pending"]
    fake = FakeKaggle(looks_before_score=10_000)
    waited = submit(predicted["dir"], "--competition", SLUG, "--run", predict_id, "-m", "slow", "--wait", 1,
                    proxy=fake.proxy, credentials="token")
    assert waited.returncode == 0, waited.stderr
    assert any(path.endswith("/IntrospectToken") for _, path in fake.calls)  # the token was the credential
    assert "has not scored it after 1 s" in waited.stdout
    assert f"aigc submit --score X --run {predict_id}" in waited.stdout
    pending = _latest(uri, predict_id)
    assert pending.tags["aigc.kaggle.status"] == "PENDING" and "public_score" not in pending.metrics
    ref = pending.tags["aigc.kaggle.ref"]
    # by hand, no network: the newest predict run of version 1 is this one
    by_hand = aigc("submit", "--score", 0.812, "--version", 1, "--config", ROOT / "configs/demo.yaml",
                   "--overrides", COMMON)
    assert by_hand.exit_code == 0, by_hand.output
    recorded = _latest(uri, predict_id)
    assert recorded.metrics["public_score"] == pytest.approx(0.812)
    assert recorded.tags["aigc.kaggle.ref"] == ref and recorded.tags["aigc.kaggle.status"] == "COMPLETE"
    assert MlflowClient(uri).get_model_version(NAME, "1").tags["aigc.public_score"] == "0.812"
    table = aigc("runs", "--config", ROOT / "configs/demo.yaml", "--overrides", COMMON).output.splitlines()
    assert table[0].startswith("f1_weighted, scored on the validation split")  # a train run: validation, not cv
    assert table[2].split()[7] == "0.8120"  # its public score beside
    (board,) = runs(uri, "leaderboard")
    csv = Path(MlflowClient(uri).download_artifacts(board.info.run_id, "submissions.csv")).read_text()
    assert predicted["train"] in csv and "0.812" in csv
    version = MlflowClient(uri).get_model_version(NAME, "1")  # one public-score sentence: the latest
    assert version.description.count("Kaggle public score:") == 1 and version.description.endswith(f"Kaggle public score: 0.812 ({SLUG}, submission {ref}, " +
                                         recorded.tags["aigc.kaggle.date"][:10] + ").")
    _assert_no_credentials_anywhere(uri, waited.stdout + waited.stderr)


def test_a_score_by_hand_without_a_config_lands_in_the_predict_runs_experiment(predicted):
    """No --config: the experiment and config come from the predict run given (no empty `aigc` experiment)."""
    uri, predict_id = predicted["uri"], predicted["predict"]["refused"]
    recorded = aigc("submit", "--score", 0.7, "--run", predict_id)
    assert recorded.exit_code == 0, recorded.output
    assert f"predict run {predict_id}: public score 0.7 recorded" in recorded.output
    assert "no --config given: run " in recorded.output and "experiment 'submit-tests'" in recorded.output
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("aigc") is None
    (board,) = runs(uri, "leaderboard")
    assert board.info.experiment_id == client.get_run(predict_id).info.experiment_id
    table = pd.read_csv(client.download_artifacts(board.info.run_id, "submissions.csv"))
    assert 0.7 in set(table["public"])


def test_submit_refuses_what_it_cannot_send(predicted):
    config = ("--config", ROOT / "configs/demo.yaml", "--overrides", COMMON)
    assert_user_error(aigc("submit", "--score", 0.5, "--run", predicted["train"], *config), "not a predict run")
    assert_user_error(aigc("submit", "--run", predicted["predict"]["scored"], *config), "--competition SLUG")
    assert_user_error(aigc("submit", "--score", 0.5, "--version", 7, *config), "no version 7")
    assert_user_error(aigc("submit", "--score", "nan", "--run", predicted["predict"]["scored"], *config),
                      "--score nan is not a number")
