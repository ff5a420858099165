"""Fault-injection helpers for tests/reliability/test_faults.py: real parts on 127.0.0.1 only.

- :class:`FaultProxy`: a threaded HTTP/1.1 reverse proxy in front of a real server (moto's
  S3) that answers errors (503 or dropped connections) for a time window or a number of
  requests, or stops listening altogether, once a trigger request has been seen.
- :class:`MlflowServer`: a real ``mlflow server`` subprocess that can be SIGKILLed and
  restarted on the same port and store.
- :func:`start_pipeline` / :func:`finish`: ``python -m asft pipeline`` as a subprocess in its
  own process group and its own Prefect home, so a SIGKILL is a real one.
- Invariant checks shared by every fault: :func:`assert_nothing_half_written_is_complete`,
  :func:`assert_aliases_sane`, :func:`assert_one_clear_line`.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]

# Files a complete output of each kind must hold (the marker is written last, so a complete
# marker without them is a half-written folder that looks finished).
REQUIRED = {
    "direction": ("manifest.json", "direction.safetensors"),
    "screening": ("screening_report.json", "accepted.jsonl"),
    "evaluation": ("report.json", "samples.jsonl"),
    "adapter": ("train_manifest.json", "adapter_model.safetensors", "adapter_config.json"),
    "checkpoint": ("checkpoint_manifest.json", "adapter.safetensors", "optimizer.safetensors", "rng.safetensors"),
    "inspection": ("inspection.json",),
    "checkpoints": (),
    "sandbox": ("sandbox_manifest.json",),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             interval: float = 0.01) -> float:
    """Poll until ``condition()``; returns the time it took. Fails early when ``proc`` exits."""
    started = time.monotonic()
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {what}")
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


# --------------------------------------------------------------------------- HTTP proxy

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_ProxyServer"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.lock:
                self.server.connections.discard(self.connection)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._body()
        action = proxy._decide(self.command, self.path)
        if action == "drop":
            self._drop()
            return
        if isinstance(action, int):
            payload = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                       b"<Message>injected fault</Message></Error>")
            self.send_response_only(action, "Service Unavailable")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except OSError:  # upstream down: behave like it (no answer)
            self._drop()
            return
        finally:
            upstream.close()
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() in ("transfer-encoding", "connection", "content-length", "date", "server"):
                continue
            self.send_header(key, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", response.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = _handle


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, proxy: "FaultProxy"):
        self.proxy = proxy
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://127.0.0.1:PORT``).

    ``arm(trigger, ...)``: once a request with ``trigger(method, path)`` true arrives, answer
    ``status`` (or drop the connection with ``drop=True``) to every request for ``seconds``
    or for the next ``requests`` requests (the trigger included); with ``stop=True`` the proxy
    stops listening instead (connections refused until the end). ``log`` records
    (seconds since start, method, path, outcome) of every request.
    """

    def __init__(self, upstream: str):
        host_port = upstream.split("://", 1)[-1].rstrip("/")
        self.upstream_host, port = host_port.rsplit(":", 1)
        self.upstream_port = int(port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log: list[tuple[float, str, str, str]] = []
        self._lock = threading.Lock()
        self._trigger: Callable[[str, str], bool] | None = None
        self._fault: dict = {}
        self._fired_at: float | None = None
        self._left = 0
        self._started = time.monotonic()
        self._server = _ProxyServer(("127.0.0.1", self.port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.stopped = False

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def arm(self, trigger: Callable[[str, str], bool], *, status: int = 503, seconds: float | None = None,
            requests: int | None = None, drop: bool = False, stop: bool = False) -> None:
        with self._lock:
            self._trigger, self._fired_at = trigger, None
            self._fault = {"status": status, "seconds": seconds, "drop": drop, "stop": stop}
            self._left = requests or 0

    @property
    def fired(self) -> bool:
        return self._fired_at is not None

    def count(self, outcome: str) -> int:
        return sum(1 for entry in self.log if entry[3] == outcome)

    def _decide(self, method: str, path: str):
        with self._lock:
            now = time.monotonic()
            if self._trigger is not None and self._fired_at is None and self._trigger(method, path):
                self._fired_at = now
            fault = self._fault if self._fired_at is not None else {}
            if fault.get("stop"):
                outcome = "drop"
                threading.Thread(target=self.stop, daemon=True).start()
            elif fault and ((fault["seconds"] is not None and now - self._fired_at < fault["seconds"])
                            or self._left > 0):
                self._left = max(0, self._left - 1)
                outcome = "drop" if fault["drop"] else fault["status"]
            else:
                outcome = "pass"
            self.log.append((round(now - self._started, 3), method, path, str(outcome)))
            return outcome

    def stop(self) -> None:
        """Stop listening and cut every open connection: from now on the endpoint refuses."""
        if self.stopped:
            return
        self.stopped = True
        self._server.shutdown()
        self._server.server_close()
        with self._server.lock:
            for conn in list(self._server.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# --------------------------------------------------------------------------- MLflow server

class MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port`` with a SQLite store and served artefacts."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 180) -> float:
        """Start (or restart on the same port and store); returns seconds until /health answered."""
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.starts += 1
        log = open(self.folder / f"server-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.folder)
        log.close()
        return wait_for(self.healthy, timeout, "the MLflow server to answer /health", proc=self.proc, interval=0.2)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server's whole process group (the CLI and its uvicorn worker)."""
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc)
        wait_for(lambda: not self.healthy(), 30, "the MLflow server to go away")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc)


# --------------------------------------------------------------------------- pipeline subprocesses

def make_prefect_home_template(folder: Path) -> subprocess.Popen:
    """Start a trivial flow once in ``folder`` so its Prefect database is migrated: each
    pipeline then gets a private copy and skips the ~10 s migration."""
    folder.mkdir(parents=True, exist_ok=True)
    code = "from prefect import flow\n@flow\ndef warm():\n    return 1\nwarm()\n"
    return subprocess.Popen([sys.executable, "-c", code], env=pipeline_env(folder), cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pipeline_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST"):
        env.pop(key, None)
    return {**env, **extra}  # a test may still name a Prefect server (PREFECT_API_URL) on purpose


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def summary(self) -> dict:
        return json.loads(self.stdout)


class Pipeline:
    """``python -m asft pipeline --config CFG --json`` in its own session (process group)."""

    def __init__(self, config: dict, folder: Path, template: Path | None = None, **env: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = self.folder / "pipeline.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.env = env
        self.template = template
        self.runs = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Pipeline":
        self.runs += 1
        home = Path(tempfile.mkdtemp(prefix=f"prefect-home-{self.runs}-", dir=self.folder))
        if self.template is not None and (self.template / "prefect.db").exists():
            shutil.copytree(self.template, home, dirs_exist_ok=True)
        self._out = open(self.folder / f"stdout-{self.runs}.txt", "wb")
        self._err = open(self.folder / f"stderr-{self.runs}.txt", "wb")
        self._started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asft", "pipeline", "--config", str(self.config_path), "--json"],
            stdout=self._out, stderr=self._err, env=pipeline_env(home, **self.env), cwd=REPO, start_new_session=True)
        return self

    def kill(self) -> int:
        kill_group(self.proc)
        return self.proc.wait()

    def finish(self, timeout: float = 400) -> Result:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            rc = self.proc.wait()
        self._out.close()
        self._err.close()
        return Result(rc, (self.folder / f"stdout-{self.runs}.txt").read_text(),
                      (self.folder / f"stderr-{self.runs}.txt").read_text(), round(time.monotonic() - self._started, 1))

    def run(self, timeout: float = 400) -> Result:
        return self.start().finish(timeout)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session=True`` and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --------------------------------------------------------------------------- invariants

# Prefect's temporary API server logs its own shutdown at exit, after the CLI's error line.
_PREFECT_SHUTDOWN = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| INFO +\| prefect - Stopping temporary server on ")


def assert_one_clear_line(result: Result, *words: str) -> str:
    """Exit 2 and stderr ends in exactly one ``asft: error: ...`` line (no traceback after it;
    only Prefect's own "Stopping temporary server" line may follow it)."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    while lines and _PREFECT_SHUTDOWN.match(lines[-1]):
        lines.pop()
    tail = "\n".join(lines[-15:])
    assert result.rc == 2, f"exit {result.rc}, stderr ends:\n{tail}"
    assert lines and lines[-1].startswith("asft: error: "), f"stderr does not end in one clear line:\n{tail}"
    assert sum(line.startswith("asft: error: ") for line in lines) == 1, tail
    assert not lines[-2].startswith(("Traceback", "  File ", "    ")), f"a traceback right before the line:\n{tail}"
    for word in words:
        assert word.lower() in lines[-1].lower(), f"{word!r} not in {lines[-1]!r}"
    return lines[-1]


def marked_outputs(root: str) -> dict[str, tuple[str, bool]]:
    """Every folder under ``root`` (local or s3://) holding an asft marker: folder -> (kind, complete)."""
    from asft import storage

    fs, base = storage.filesystem(root)
    found = {}
    if not fs.exists(base):
        return found
    for path in fs.find(base):
        if path.endswith("/" + storage.OUTPUT_MARKER):
            record = json.loads(fs.cat_file(path))
            found[path.rsplit("/", 1)[0]] = (record["asft_output"], bool(record["complete"]))
    return found


def assert_nothing_half_written_is_complete(root: str) -> dict[str, tuple[str, bool]]:
    """Every folder whose marker says complete holds all of its kind's files; no local staging
    folder (``.NAME.*.tmp``) is left by a writer that finished. Returns the markers found."""
    from asft import storage

    fs, _ = storage.filesystem(root)
    outputs = marked_outputs(root)
    for folder, (kind, complete) in outputs.items():
        if not complete:
            continue
        missing = [name for name in REQUIRED.get(kind, ()) if not fs.exists(f"{folder}/{name}")]
        assert not missing, f"{folder} is marked a complete {kind} but lacks {missing}"
    return outputs


def staging_leftovers(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob(".*.tmp")]


def registry_state(tracking_uri: str) -> dict:
    """{model: {"aliases": {...}, "versions": {n: tags + run status}}} for every registered model."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    state = {}
    for model in c.search_registered_models():
        versions = {}
        for v in c.search_model_versions(f"name = '{model.name}'"):
            status = c.get_run(v.run_id).info.status if v.run_id else None
            versions[int(v.version)] = {**v.tags, "run_status": status}
        state[model.name] = {"aliases": {a: int(n) for a, n in (model.aliases or {}).items()}, "versions": versions}
    return state


def assert_aliases_sane(tracking_uri: str) -> dict:
    """No alias names a version that is incomplete, failed its gates or whose run is not
    FINISHED; previous-champion is never the champion; no promotion lock is left behind."""
    state = registry_state(tracking_uri)
    locks = [name for name in state if name.endswith(".promotion-lock")]
    assert not locks, f"promotion locks left behind: {locks}"
    for name, model in state.items():
        for alias, number in model["aliases"].items():
            tags = model["versions"][number]
            assert tags.get("asft.registration") == "complete", f"{name}@{alias} -> v{number} is incomplete: {tags}"
            assert tags.get("asft.gate.passed") == "true", f"{name}@{alias} -> v{number} failed its gates"
            assert tags["run_status"] == "FINISHED", f"{name}@{alias} -> v{number}: run is {tags['run_status']}"
        aliases = model["aliases"]
        if "previous-champion" in aliases:
            assert aliases.get("champion") != aliases["previous-champion"], aliases
    return state
