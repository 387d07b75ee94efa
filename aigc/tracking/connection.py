"""Connecting to the tracking store, finding runs and experiments, and what a failed call means.

The error taxonomy lives here: an *outage* (connection refused or reset, a timeout, HTTP 5xx
or 429) is temporary, so results wait in the outbox for `aigc sync`; anything else the
server answers (400 bad request, 401/403 no permission, 404 deleted run) is permanent and
ends the step with one UserError naming the run and the cause.
"""

from __future__ import annotations

import os

import mlflow
import requests
from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from aigc.errors import UserError, mask_uri  # noqa: F401 - mask_uri: aigc.tracking's API too

# What a call to the tracking store may raise; `is_outage` says which of them are temporary.
TRACKING_ERRORS = (MlflowException, requests.RequestException, ConnectionError, TimeoutError)
_NETWORK_ERRORS = (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout,
                   requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError)


# --- URIs ------------------------------------------------------------------------------------

def display_uri() -> str:
    """The current tracking URI, safe to print."""
    return mask_uri(mlflow.get_tracking_uri())


# --- the error taxonomy ----------------------------------------------------------------------

def is_outage(error: BaseException) -> bool:
    """True when the server is away (retry later), False when it answered and refused (fix something)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, _NETWORK_ERRORS):
            return True
        status = http_status(error)
        if status is not None:
            return status >= 500 or status == 429
        # MLflow wraps a failed request in a plain MlflowException raised inside `except`: look at its cause
        error = error.__cause__ or error.__context__
    return False


def http_status(error: BaseException) -> int | None:
    """The HTTP status the server answered with, when `error` is such an answer."""
    if isinstance(error, requests.HTTPError) and error.response is not None:  # artifact uploads
        return error.response.status_code
    if isinstance(error, RestException) or (isinstance(error, MlflowException)
                                            and "failed with error code" in error.message):
        return error.get_http_status_code()
    return None


def refused(error: BaseException, what: str) -> UserError:
    """A permanent tracking error as one clear message: `what` names the run (or experiment)."""
    status = http_status(error)
    hint = {401: "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server",
            403: "this account has no permission for that; ask the server's admin for it",
            404: "it no longer exists on the server (deleted?)"}.get(status, "this will not succeed by retrying")
    cause = mask_uri(" ".join(str(error).split()))[:300]
    code = f"HTTP {status}: " if status else ""
    return UserError(f"{what}: the tracking server {display_uri()} refused the request ({code}{cause}); {hint}")


def unreachable(error: BaseException, what: str) -> UserError:
    return UserError(f"{what}: the tracking server {display_uri()} is unreachable ({type(error).__name__}); "
                     "try again when it is back")


def as_user_error(error: BaseException, what: str) -> UserError:
    return unreachable(error, what) if is_outage(error) else refused(error, what)


# --- connecting ----------------------------------------------------------------------------

MAX_ARTIFACT_BYTES = 1 << 30  # tracking.max_artifact_bytes of the step that connected (queries.load_table reads it)


def connect(settings, read_only: bool = False) -> None:
    """Point MLflow at its store (MLFLOW_TRACKING_URI or ./mlflow.db) and `settings.experiment`.

    A remote server that doesn't answer, or refuses the login, is reported at once, not after minutes
    of retries. `read_only`: a command that only reads (`aigc runs`) never creates the experiment.
    """
    global MAX_ARTIFACT_BYTES
    if not settings.enabled:
        raise UserError("tracking.enabled is false, but this step needs MLflow (runs, registry); "
                        "only `train` runs without it. Set tracking.enabled=true")
    MAX_ARTIFACT_BYTES = settings.max_artifact_bytes
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        fail_fast()
        _check_health(uri)
        _check_login(uri)
    if read_only:
        return
    if not os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` chose the experiment already
        try:
            mlflow.set_experiment(settings.experiment)
        except TRACKING_ERRORS as error:
            raise as_user_error(error, f"experiment {settings.experiment}") from None


def use_experiment_of(run_id: str) -> None:
    """New runs go to `run_id`'s experiment: a command given runs (`aigc compare`) needs no --config to find
    it. Under `mlflow run` the run exists already, in the experiment `mlflow run` chose."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        experiment = get_run(run_id).info.experiment_id
        try:
            mlflow.set_experiment(experiment_id=experiment)
        except TRACKING_ERRORS as error:  # e.g. the experiment was deleted
            raise as_user_error(error, f"experiment {experiment} of run {run_id}") from None


def fail_fast() -> None:
    """Settings for talking to a tracking server over HTTP.

    Fail a call within seconds while the server is away (the run buffers and retries, `aigc sync`
    reports it), instead of MLflow's default of minutes of backoff that would stall training.
    And MLflow prints a "View run" link built from the tracking URI when a run ends: with
    user:password@ inside the URI that link would show them, so it is not printed then.
    """
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
        os.environ.setdefault(key, value)
    if display_uri() != mlflow.get_tracking_uri():
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _check_health(uri: str) -> None:
    """The server answers /health, with the login MLflow will use (a proxy in front may want it there too)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=5,
                                auth=(user, password) if user and password else None)
    except requests.RequestException as error:
        raise UserError(f"tracking server {mask_uri(uri)} is not reachable ({type(error).__name__}); "
                        "start it (make server) or fix MLFLOW_TRACKING_URI") from None
    if response.status_code in (401, 403):  # it answered: reachable, and it said no
        raise _login_refused(uri, response.status_code)
    if not response.ok:
        raise UserError(f"tracking server {mask_uri(uri)} answered /health with HTTP {response.status_code}; "
                        "check the server (its log), or MLFLOW_TRACKING_URI")


def _check_login(uri: str) -> None:
    """/health needs no login: ask for something that does, so bad credentials fail here, clearly."""
    try:
        MlflowClient().search_experiments(max_results=1)
    except TRACKING_ERRORS as error:
        if http_status(error) in (401, 403):
            raise _login_refused(uri, http_status(error)) from None
        raise as_user_error(error, "listing experiments") from None


def _login_refused(uri: str, status: int) -> UserError:
    """401 (who are you?) and 403 (not you) before any work: both mean the login variables."""
    return UserError(f"tracking server {mask_uri(uri)} refused the login (HTTP {status}): set "
                     "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server "
                     "that may read its experiments")


# --- runs and experiments -------------------------------------------------------------------

def current_run_id() -> str:
    return mlflow.active_run().info.run_id


def current_experiment_id() -> str:
    """The active run's experiment; before a step starts its run (checks that should leave no
    failed run behind), the one `mlflow run` or connect() chose."""
    active = mlflow.active_run()
    if active:
        return active.info.experiment_id
    if os.environ.get("MLFLOW_RUN_ID"):
        return get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    # mlflow.set_experiment leaves its choice in MLFLOW_EXPERIMENT_ID (for subprocesses); before any, MLflow's
    # Default experiment, id 0 in every store but Databricks'
    return MLFLOW_EXPERIMENT_ID.get() or "0"


def get_run(run_id: str):
    try:
        return MlflowClient().get_run(run_id)
    except TRACKING_ERRORS as error:
        if is_outage(error):
            raise unreachable(error, f"run {run_id}") from None
        raise UserError(f"run {run_id} not found in {display_uri()}; check the run id") from None


def experiment_id(name: str) -> str | None:
    experiment = MlflowClient().get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


def experiment_names() -> list[str]:
    """The store's active experiments, by name (for messages about a name that is not there)."""
    return sorted(experiment.name for experiment in MlflowClient().search_experiments())


def delete_run(run_id: str) -> None:
    """Soft-delete a run (MLflow keeps it restorable): a killed fold run that is trained again."""
    MlflowClient().delete_run(run_id)
