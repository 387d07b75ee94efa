"""Real tracking servers for tests: `mlflow server` processes, a throwaway PostgreSQL, basic auth.

Each helper is a context manager that starts a real process on a free 127.0.0.1 port,
waits until it answers, and stops it (and its children) when the block ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

# The job runner (huey) serves GenAI features aigc doesn't use: three processes fewer on 2 cores.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
START_TIMEOUT = 120  # seconds; a server starts in ~8 s here, migrating an empty PostgreSQL takes longer


@dataclass
class Server:
    """A running `mlflow server`: its URI, stores, log, and the environment a client needs."""

    uri: str
    backend: str
    artifacts: Path
    log: Path
    client_env: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)  # passwords and keys: never to show up in a run


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_uri: str, folder: Path, env: dict[str, str] | None = None,
                  app_name: str | None = None, port: int | None = None) -> Iterator[Server]:
    """`mlflow server` with this backend store, artifacts proxied into folder/artifacts, until the block ends.

    `port` (default: a free one) lets a test stop a server and start it again where clients expect it.
    """
    port, artifacts, log = port or free_port(), folder / "artifacts", folder / "server.log"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"] + (["--app-name", app_name] if app_name else [])
    with open(log, "ab") as output:  # appended: a restarted server's log follows the first one's
        # A session of its own: the server forks workers, and stopping must reach them all.
        process = subprocess.Popen(command, cwd=folder, env={**os.environ, **SERVER_ENV, **(env or {})},
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    server = Server(uri, backend_uri, artifacts, log, {"MLFLOW_TRACKING_URI": uri})
    try:
        _wait_healthy(server, process)
        yield server
    finally:
        _stop(process)


def _wait_healthy(server: Server, process: subprocess.Popen) -> None:
    """Poll GET /health until it answers OK; a server that dies or hangs fails with its log."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.uri}/health", timeout=2).text == "OK":
                return
        time.sleep(0.3)
    state = f"exited with {process.returncode}" if process.poll() is not None else f"not healthy in {START_TIMEOUT} s"
    raise RuntimeError(f"mlflow server {state}; its log:\n{server.log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
            return


# --- basic auth ---------------------------------------------------------------------------------

@contextlib.contextmanager
def basic_auth_server(backend_uri: str, folder: Path) -> Iterator[Server]:
    """`mlflow server --app-name basic-auth` with random admin password and secret key, users in folder/auth.db.

    The yielded server's client_env logs in as a fresh non-admin user, as a team member would.
    """
    admin_password, secret_key = secrets.token_urlsafe(18), secrets.token_urlsafe(32)
    config = folder / "basic_auth.ini"
    config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder / 'auth.db'}\n"
                      "admin_username = admin\n"
                      # Cache checked passwords: hashing one (PBKDF2) on each of a run's requests costs seconds.
                      "auth_cache_ttl_seconds = 300\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key}
    with mlflow_server(backend_uri, folder, env, app_name="basic-auth") as server:
        username, password = f"tester-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
        created = requests.post(f"{server.uri}/api/2.0/mlflow/users/create", auth=("admin", admin_password),
                                json={"username": username, "password": password}, timeout=30)
        created.raise_for_status()
        server.client_env.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
        server.secrets += [password, admin_password, secret_key]
        yield server


# --- PostgreSQL ---------------------------------------------------------------------------------

def postgres_bin() -> Path:
    """The folder of initdb/pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which("initdb") or max(glob.glob("/usr/lib/postgresql/*/bin/initdb"), default=None,
                                          key=lambda path: int(Path(path).parts[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: no initdb on PATH or in /usr/lib/postgresql/*/bin. "
                           "Install it (apt-get install -y postgresql; .ci/run does this).")
    return Path(found).resolve().parent


def _unprivileged() -> tuple[list[str], str | None]:
    """The command prefix and user that run PostgreSQL: it refuses to run as root, so root runs it as `postgres`."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:  # Debian's package creates it; a PostgreSQL from elsewhere may not have
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return ["runuser", "-u", "postgres", "--"], "postgres"


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port; yields postgresql://mlflow:PASSWORD@.../mlflow."""
    binaries, (prefix, user) = postgres_bin(), _unprivileged()
    # Not pytest's tmp_path: its parents are 0700 root, closed to the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="aigc-postgres-"))
    password, port = secrets.token_urlsafe(18), free_port()
    (folder / "password").write_text(password)
    if user:
        shutil.chown(folder, user)
        shutil.chown(folder / "password", user)

    def run(tool, *args):
        done = subprocess.run([*prefix, str(binaries / tool), *args], check=False, capture_output=True,
                              text=True, env={**os.environ, "PGPASSWORD": password})
        if done.returncode:
            log = folder / "postgres.log"
            raise RuntimeError(f"PostgreSQL: {tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
                               + (log.read_text()[-2000:] if log.exists() else ""))

    try:
        run("initdb", "-D", f"{folder}/data", "-U", "mlflow", "--pwfile", f"{folder}/password",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync")
        run("pg_ctl", "-D", f"{folder}/data", "-l", f"{folder}/postgres.log", "-w", "-t", "60",
            "-o", f"-h 127.0.0.1 -p {port} -k {folder} -F", "start")
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        yield f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            run("pg_ctl", "-D", f"{folder}/data", "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


# --- a server that fails on some requests ----------------------------------------------------------

def _forwarding_handler(upstream: str, fragment: str | None = None, status: int = 500):
    """An http.server handler that forwards every request to `upstream` and sends its answer back, except a
    request whose path contains `fragment`, answered `status` at once. HTTP/1.0: one request a connection, so a
    proxy that closes its port leaves no connection open behind it."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if fragment is not None and fragment in self.path:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            answer = requests.request(self.command, upstream + self.path, headers=headers, data=body, timeout=60)
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward  # PUT: artifact uploads

        def log_message(self, *_):
            pass

    return Handler


class _Listener:
    """An HTTP server on 127.0.0.1:`port` (0: a free one), answering from a thread until close()."""

    def __init__(self, handler, port: int = 0):
        import http.server
        import threading

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)  # SO_REUSEADDR: same port again
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # the port refuses connections from here on


@contextlib.contextmanager
def failing_proxy(upstream: str, fragment: str, status: int = 500) -> Iterator[str]:
    """A proxy on a free 127.0.0.1 port in front of `upstream` that answers `status` to every request whose path
    contains `fragment` and forwards the rest (logins included): a server whose registry, say, is down."""
    listener = _Listener(_forwarding_handler(upstream, fragment, status))
    try:
        yield f"http://127.0.0.1:{listener.port}"
    finally:
        listener.close()


class SwitchableProxy:
    """A proxy in front of `upstream` that can go away and come back on the same port: down() closes the port
    (clients get "connection refused", what they get from a stopped server), up() opens it again at once,
    where restarting `mlflow server` costs ~8 s. Use it as a context manager; it starts up."""

    def __init__(self, upstream: str):
        self.handler, self.listener = _forwarding_handler(upstream), None
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        self.listener = _Listener(self.handler, self.port)

    def down(self) -> None:
        self.listener.close()
        self.listener = None

    def __enter__(self) -> SwitchableProxy:
        self.up()
        return self

    def __exit__(self, *_) -> None:
        if self.listener:
            self.down()
