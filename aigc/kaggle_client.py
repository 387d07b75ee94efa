"""The one place aigc talks to Kaggle, through the official `kaggle` package (its KaggleApi).

Credentials are the package's own (first found wins): KAGGLE_API_TOKEN or ~/.kaggle/access_token,
KAGGLE_USERNAME + KAGGLE_KEY, kaggle.json in KAGGLE_CONFIG_DIR (default ~/.kaggle), or
`kaggle auth login`. aigc never reads, logs or prints them: everything the package prints is
swallowed (its VERBOSE mode prints request headers) and error text is scrubbed of them.

Host: the package talks to https://api.kaggle.com; KAGGLE_API_ENVIRONMENT=LOCALHOST (read when
`kaggle` is first imported) makes it plain http://localhost, and requests honours the standard
HTTP_PROXY variables: that is how the tests reach a fake Kaggle endpoint on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

from aigc.errors import UserError

NO_CREDENTIALS = ("no Kaggle credentials found: create an API token at https://www.kaggle.com/settings/api and "
                  "set KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json in ~/.kaggle); "
                  "nothing was submitted")
SECRET_VARIABLES = ("KAGGLE_API_TOKEN", "KAGGLE_KEY")


@dataclass(frozen=True)
class Submission:
    """One submission as Kaggle lists it. status: PENDING, COMPLETE or ERROR."""

    ref: int
    status: str
    public_score: float | None
    date: str
    message: str
    error: str = ""


def submit(file: str | Path, slug: str, message: str) -> int:
    """Upload a submission file to competition `slug`; returns Kaggle's submission reference."""
    api = _api()
    with _translated(f"submitting to {slug}", "nothing was submitted"), _quiet():
        response = api.competition_submit(str(file), message, slug, quiet=True)
    if not response.ref:
        reason = _scrub(response.message or "no reason given")
        raise UserError(f"Kaggle did not accept {Path(file).name} for competition {slug}: {reason}")
    return int(response.ref)


def wait_for_score(slug: str, ref: int, timeout: float) -> Submission:
    """Poll the competition's submissions until `ref` is scored or failed, at most `timeout` seconds.

    Returns the last state seen (status PENDING when the time ran out).
    """
    api = _api()
    deadline = time.monotonic() + timeout
    poll = min(15.0, max(0.5, timeout / 20))  # ~20 looks per wait, never hammering Kaggle
    while True:
        found = _find(api, slug, ref)
        if found.status != "PENDING" or time.monotonic() + poll > deadline:
            return found
        time.sleep(poll)


def _find(api, slug: str, ref: int) -> Submission:
    later = f"submission {ref} was made; once kaggle.com shows its score, record it with aigc submit --score"
    with _translated(f"reading the submissions of {slug}", later), _quiet():
        listed = api.competition_submissions(slug) or []
    for item in listed:
        if item and int(item.ref) == int(ref):
            score = item.public_score
            return Submission(ref=int(item.ref), status=item.status.name,
                              public_score=float(score) if score not in (None, "") else None,
                              date=item.date.isoformat() if item.date else "", message=item.description,
                              error=_scrub(item.error_description or ""))
    return Submission(ref=int(ref), status="PENDING", public_score=None, date="", message="")


@functools.cache  # authenticating with a token costs a request: once per process
def _api():
    """An authenticated KaggleApi, or one clear UserError."""
    import requests

    with _quiet():  # importing kaggle authenticates once and prints its help when it can't
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:  # the package's answer to "no credentials" is exit(1)
            raise UserError(NO_CREDENTIALS) from None
        except requests.RequestException as error:  # a token is checked online
            raise UserError(_network_message(error, "checking the Kaggle credentials", "nothing was submitted")) \
                from None
    return api


@contextlib.contextmanager
def _translated(action: str, consequence: str):
    """Network and HTTP failures of the kaggle package -> one UserError naming what to do."""
    import requests

    try:
        yield
    except requests.HTTPError as error:
        code = error.response.status_code if error.response is not None else None
        if code in (401, 403):
            hint = "Kaggle refused the credentials (or you have not joined the competition and accepted its rules)"
        elif code == 404:
            hint = "competition not found: check the --competition slug (the last part of its kaggle.com URL)"
        else:
            hint = f"Kaggle answered HTTP {code}: {_scrub(str(error))}"
        raise UserError(f"{action}: {hint}; {consequence}") from None
    except requests.RequestException as error:
        raise UserError(_network_message(error, action, consequence)) from None
    except ValueError as error:  # the package's own argument checks
        raise UserError(f"{action}: {_scrub(str(error))}; {consequence}") from None


def _network_message(error, action: str, consequence: str) -> str:
    return (f"{action}: Kaggle is not reachable ({type(error).__name__}); check the network "
            f"(or HTTPS_PROXY) and try again; {consequence}")


@contextlib.contextmanager
def _quiet():
    """Swallow what the package prints (progress bars, auth help, verbose request headers)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _scrub(text: str) -> str:
    """Error text from Kaggle with any credential value masked, so it is safe to print."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
