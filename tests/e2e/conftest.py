"""End-to-end fixtures: the real esteira binary, started as a process.

Every server runs on a free loopback port (found by binding a socket to port
0), in a fresh data directory, with its JSON log (stderr) captured to a file
that is printed when a test fails.  Every process a test starts is killed at
teardown, whatever happened, and a child also dies if pytest itself dies
(PR_SET_PDEATHSIG), so a run never leaves an esteira process behind.

    def test_x(server):                 # `esteira up`, default test settings
        r = server.post("/v1/jobs", json={"kind": "noop"})
    def test_y(start_server):           # other settings, roles or several servers
        s = start_server(env={"ESTEIRA_WORKERS": "0"}, cmd="serve")
        s.restart(sig=signal.SIGKILL)    # same data dir, same port
        s.cli("keys", "list")            # a command with ESTEIRA_URL and the data dir set
        s.sql("SELECT count(*) FROM noop_effects")   # the sqlite3 CLI on DATA_DIR/esteira.db

Run with Debian's python (the one with python3-pytest and python3-requests):
    ESTEIRA_BIN=build/esteira /usr/bin/python3 -m pytest -q tests/e2e
"""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("ESTEIRA_BIN", os.path.join(ROOT, "build", "esteira")))
START_TIMEOUT = float(os.environ.get("ESTEIRA_TEST_START_TIMEOUT", "20"))

# What every test server gets unless a test says otherwise: quick retries, a
# short shutdown, and enough log to see what happened.
DEFAULT_ENV = {
    "ESTEIRA_HOST": "127.0.0.1",
    "ESTEIRA_LOG_LEVEL": "info",
    "ESTEIRA_WORKERS": "4",
    "ESTEIRA_HTTP_THREADS": "4",
    "ESTEIRA_JOB_KINDS": "noop:base=100ms,cap=1s,attempts=3",
    "ESTEIRA_SHUTDOWN_TIMEOUT_MS": "5000",
}

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port():
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra=None):
    """The environment of a child: ours without any ESTEIRA_* that the
    caller's shell may hold (tests must not depend on it), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESTEIRA_")}
    env.update(extra or {})
    return env


def run_cli(args, env=None, cwd=None, timeout=60, input=None):
    """Runs the binary with args; returns the CompletedProcess (text)."""
    return subprocess.run(
        [BIN, *args],
        env=clean_env(env),
        cwd=cwd or tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        preexec_fn=_die_with_parent,
    )


class StartError(Exception):
    pass


class Server:
    """One esteira process (and its restarts) on one data directory."""

    def __init__(self, workdir, env=None, cmd="up", port=None, name="esteira", data_dir=None):
        self.workdir = workdir
        self.name = name
        self.data_dir = data_dir or os.path.join(workdir, "data")
        self.port = port or free_port()
        self.cmd = cmd
        self.env = dict(DEFAULT_ENV)
        self.env.update(env or {})
        self.proc = None
        self.starts = 0
        self.log_offset = 0  # where the current start's lines begin in the log
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.token = None  # sent as a Bearer token by the request helpers when set
        self.http = requests.Session()

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self):
        return os.path.join(self.data_dir, "esteira.db")

    def _proc_env(self):
        env = dict(self.env)
        env["ESTEIRA_DATA_DIR"] = self.data_dir
        env["ESTEIRA_PORT"] = str(self.port)
        return clean_env(env)

    def spawn(self):
        """Starts the process without waiting for it (see wait_ready)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"---- start #{self.starts}: esteira {self.cmd} on port {self.port}\n".encode())
        log.flush()
        self.log_offset = log.tell()
        self.proc = subprocess.Popen(
            [BIN, self.cmd],
            env=self._proc_env(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self.proc

    def start(self, timeout=START_TIMEOUT):
        self.spawn()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        """Waits for the start log line and a 200 from /healthz."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(
                    f"esteira {self.cmd} exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            if any(l.get("msg") == "esteira started" for l in self.log_lines(current=True)):
                if self.cmd == "work":
                    return  # workers only: no HTTP to ask
                try:
                    r = self.http.get(self.url + "/healthz", timeout=2)
                    if r.status_code == 200:
                        started = [l for l in self.log_lines(current=True) if l.get("msg") == "esteira started"]
                        assert started[-1].get("port") == self.port, started[-1]
                        return
                except requests.ConnectionError:
                    pass
            time.sleep(0.05)
        raise StartError(f"esteira {self.cmd} not ready after {timeout} s:\n" + self.log_tail())

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends sig and waits; returns the exit status (negative = signal)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"esteira did not exit within {timeout} s of signal {sig}")

    def kill(self):
        """kill -9, and reap it."""
        return self.stop(signal.SIGKILL, timeout=10)

    def restart(self, sig=signal.SIGTERM, env=None, timeout=START_TIMEOUT):
        """Stops (with sig) and starts again on the same data dir and port."""
        self.stop(sig)
        if env:
            self.env.update(env)
        return self.start(timeout)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------ logs
    def log_text(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_lines(self, current=False):
        """The JSON log lines (of the current start only when current)."""
        out = []
        try:
            with open(self.log_path, "rb") as f:
                if current:
                    f.seek(self.log_offset)
                data = f.read().decode(errors="replace")
        except FileNotFoundError:
            return out
        for line in data.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def log_tail(self, n=60):
        return "\n".join(self.log_text().splitlines()[-n:])

    # ------------------------------------------------------------ HTTP
    def request(self, method, path, token=None, **kw):
        headers = dict(kw.pop("headers", None) or {})
        tok = token if token is not None else self.token
        if tok and "Authorization" not in headers:
            headers["Authorization"] = "Bearer " + tok
        kw.setdefault("timeout", 30)
        return self.http.request(method, self.url + path, headers=headers, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def create_job(self, payload=None, expect=201, **fields):
        body = {"kind": fields.pop("kind", "noop")}
        if payload is not None:
            body["payload"] = payload
        body.update(fields)
        r = self.post("/v1/jobs", json=body)
        assert r.status_code == expect, (r.status_code, r.text)
        return r.json()

    def job(self, job_id, **kw):
        r = self.get(f"/v1/jobs/{job_id}", **kw)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def wait_job(self, job_id, statuses=("done",), timeout=30):
        """Polls a job until its status is one of statuses; returns it."""
        if isinstance(statuses, str):
            statuses = (statuses,)
        deadline = time.monotonic() + timeout
        j = None
        while time.monotonic() < deadline:
            j = self.job(job_id)
            if j["status"] in statuses:
                return j
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not {statuses} after {timeout} s: {j}")

    def all_jobs(self, query=""):
        """Every job of the list endpoint, following cursors."""
        items, cursor = [], None
        for _ in range(10000):
            q = query + ("&" if query else "") + "limit=500" + (f"&cursor={cursor}" if cursor else "")
            r = self.get("/v1/jobs?" + q)
            assert r.status_code == 200, r.text
            page = r.json()
            items += page["items"]
            cursor = page["nextCursor"]
            if not cursor:
                return items
        raise AssertionError("cursor pagination does not end")

    # ------------------------------------------------------------ CLI and store
    def cli(self, *args, env=None, timeout=60):
        """Runs `esteira ARGS` against this server: ESTEIRA_URL set, and the
        same data dir (the admin commands work on the store directly)."""
        e = {
            "ESTEIRA_URL": self.url,
            "ESTEIRA_DATA_DIR": self.data_dir,
            "ESTEIRA_LOG_LEVEL": "warn",
        }
        if self.token:
            e["ESTEIRA_TOKEN"] = self.token
        e.update(env or {})
        return run_cli(list(args), env=e, cwd=self.workdir, timeout=timeout)

    def sql(self, query):
        """Rows of a query on DATA_DIR/esteira.db through the sqlite3 CLI."""
        r = subprocess.run(
            ["sqlite3", "-batch", "-noheader", "-separator", "|", "-cmd", ".timeout 10000",
             self.db_path, query],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, f"sqlite3 failed ({r.returncode}): {r.stderr}"
        return [line.split("|") for line in r.stdout.splitlines()]

    def sql1(self, query):
        rows = self.sql(query)
        assert len(rows) == 1 and len(rows[0]) == 1, rows
        return rows[0][0]

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.http.close()


# ------------------------------------------------------------------ pytest glue
@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # keeps each phase's report on the item, so fixtures know whether the test failed
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_sessionstart(session):
    if not os.access(BIN, os.X_OK):
        raise pytest.UsageError(f"no esteira binary at {BIN}: run `make` or set ESTEIRA_BIN")
    if shutil.which("sqlite3") is None:
        raise pytest.UsageError("the sqlite3 CLI is needed (scripts/deps installs it)")


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="esteira-e2e-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start_server(request, workdir):
    """A factory: start_server(env=None, cmd='up', wait=True, name=None,
    port=None, data_dir=None) -> Server.  Servers given the data_dir of another
    share its backends (e.g. `serve` and `work` on one store).  Every server it
    made is killed at teardown; their logs are printed if the test failed."""
    servers = []

    def factory(env=None, cmd="up", wait=True, name=None, port=None, data_dir=None):
        name = name or f"esteira{len(servers) + 1}"
        sub = os.path.join(workdir, name)
        os.makedirs(sub, exist_ok=True)
        s = Server(sub, env=env, cmd=cmd, port=port, name=name, data_dir=data_dir)
        servers.append(s)
        if wait:
            s.start()
        return s

    yield factory

    failed = any(getattr(request.node, "rep_" + w, None) is not None and
                 getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    for s in servers:
        # how it ended before teardown touched it: a crash shows here, not in its log
        rc = s.proc.poll() if s.proc is not None else None
        s.cleanup()
        if failed:
            if rc is None:
                state = "running at teardown" if s.proc is not None else "never started"
            elif rc < 0:
                state = f"killed by {signal.Signals(-rc).name}"
            else:
                state = f"exited {rc}"
            print(f"\n----- {s.name} ({s.cmd}, {state}) log {s.log_path}, last lines:\n{s.log_tail(80)}")
    # the promise: nothing left running
    for s in servers:
        assert s.proc is None or s.proc.poll() is not None, f"{s.name} still running"


@pytest.fixture
def server(start_server):
    """`esteira up` with the default test settings, ready."""
    return start_server()


def wait_for(fn, timeout=10, interval=0.05, what="condition"):
    """Polls fn() until it returns something true; returns that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not met after {timeout} s (last: {last!r})")


def error_shape(r, status, code=None):
    """Asserts the SPEC's error body: {"error":{"code","message"},"requestId"}."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) >= {"error", "requestId"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert body["requestId"] == r.headers.get("X-Request-Id"), (body, r.headers)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def uuid_like(s):
    return bool(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", s or ""))
