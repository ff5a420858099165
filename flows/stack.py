"""The team stack without Docker, on 127.0.0.1: ``asft stack up | down | env``.

The same services as docker/compose.yaml, as local processes:

    postgres (Debian's postgresql) ─┬─► prefect server ─► work pools, deployments, process workers
    S3 (moto's server mode)  ───────┴─► mlflow server (metadata in postgres, artefacts proxied to S3)

PostgreSQL is the system's own server (``apt-get install postgresql``), not a pip-bundled
one: it is what a team runs, and its binaries are on every Debian/Ubuntu host. moto stands in
for MinIO; it keeps objects in memory, so a restart of the stack starts from empty buckets.
The variables are the ones docker/.env sets for compose (``ASFT_CODE_DIR`` is this checkout
here, ``/opt/asft`` in the images), so ``prefect deploy`` and the flows read the same names
in both setups. Every process runs in its own session with its pid and log under the root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from asft.errors import AsftError

CODE_DIR = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
POOLS = {"asft-cpu": "asft-cpu.process.json", "asft-gpu-process": "asft-gpu-process.process.json"}
DB_USER = "asft"


class StackConfig(BaseModel):
    """Where the stack keeps its state and which loopback ports it uses."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("runs/stack", description="Folder for the databases, logs and pid files")
    postgres_port: int = Field(55432, ge=1024, le=65535, description="PostgreSQL port")
    s3_port: int = Field(59000, ge=1024, le=65535, description="S3 endpoint (moto) port")
    mlflow_port: int = Field(55000, ge=1024, le=65535, description="MLflow server port")
    prefect_port: int = Field(54200, ge=1024, le=65535, description="Prefect server (API and UI) port")
    bucket: str = Field("asft", description="Bucket for pipeline artefacts (ASFT_ARTIFACT_ROOT is s3://<bucket>/pipeline)")
    mlflow_bucket: str = Field("mlflow", description="Bucket the MLflow server proxies artefacts to")
    workers: bool = Field(True, description="Also create the pools, deploy and start one process worker per pool")

    @property
    def folder(self) -> Path:
        return Path(self.root).resolve()


def environment(config: StackConfig) -> dict[str, str]:
    """What clients, workers and ``prefect deploy`` need to talk to this stack."""
    s3 = f"http://{HOST}:{config.s3_port}"
    return {
        "PREFECT_API_URL": f"http://{HOST}:{config.prefect_port}/api",
        "PREFECT_HOME": str(config.folder / "prefect-home"),
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{config.mlflow_port}",
        "AWS_ENDPOINT_URL": s3,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        # moto accepts any key pair; a real S3 takes its own from the environment instead
        "AWS_ACCESS_KEY_ID": "asft-stack",
        "AWS_SECRET_ACCESS_KEY": "asft-stack-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "ASFT_CODE_DIR": str(CODE_DIR),
        "ASFT_GPU_POOL": "asft-gpu-process",
        "ASFT_ARTIFACT_ROOT": f"s3://{config.bucket}/pipeline",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


@dataclass
class Service:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # PostgreSQL refuses to run as root


def _bin(name: str) -> str:
    """An executable of this environment (prefect, mlflow), else one on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if not found:
        raise AsftError(f"{name} not found: install PostgreSQL (Debian/Ubuntu: apt-get install postgresql), "
                        "or put its bin folder on PATH")
    return str(found)


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status < 500
        except OSError:
            return False
    return check


def _postgres_ready(config: StackConfig) -> Callable[[], bool]:
    def check() -> bool:
        probe = [_postgres_bin("pg_isready"), "-h", HOST, "-p", str(config.postgres_port), "-U", DB_USER]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0
    return check


def _services(config: StackConfig) -> list[Service]:
    env, root = environment(config), config.folder
    database = f"{DB_USER}@{HOST}:{config.postgres_port}"
    postgres_user = "postgres" if os.geteuid() == 0 else None
    return [
        Service("postgres", [_postgres_bin("postgres"), "-D", str(root / "postgres"), "-h", HOST,
                             "-p", str(config.postgres_port), "-k", str(root / "postgres")],
                _postgres_ready(config), user=postgres_user),
        Service("s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(config.s3_port)],
                _http_ok(env["AWS_ENDPOINT_URL"])),
        Service("prefect-server", [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(config.prefect_port)],
                _http_ok(env["PREFECT_API_URL"] + "/health"),
                env={"PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{database}/prefect"}),
        Service("mlflow", [_bin("mlflow"), "server", "--host", HOST, "--port", str(config.mlflow_port), "--workers", "1",
                           "--backend-store-uri", f"postgresql://{database}/mlflow",
                           "--artifacts-destination", f"s3://{config.mlflow_bucket}/"],
                _http_ok(env["MLFLOW_TRACKING_URI"] + "/health")),
    ]


def _workers(config: StackConfig) -> list[Service]:
    return [Service(f"worker-{pool}", [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                    lambda: True) for pool in POOLS]


# --- processes ---------------------------------------------------------------------------

def _pid_file(config: StackConfig, name: str) -> Path:
    return config.folder / "pids" / f"{name}.pid"


def _running(config: StackConfig, name: str) -> int | None:
    """The pid of a service this stack started and that is still alive."""
    try:
        pid = int(_pid_file(config, name).read_text())
    except (OSError, ValueError):
        return None
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, and it ended: reaped now
            return None
    except ChildProcessError:  # started by another `asft stack up`
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def _start(config: StackConfig, service: Service, env: dict[str, str], timeout_s: float) -> None:
    if _running(config, service.name) and service.ready():
        return
    log = config.folder / "logs" / f"{service.name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(service.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **env, **service.env}, cwd=CODE_DIR, user=service.user,
                                   start_new_session=True)
    _pid_file(config, service.name).write_text(str(process.pid))
    deadline = time.monotonic() + timeout_s
    while not service.ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            state = f"exited with {process.returncode}" if process.poll() is not None else f"not ready after {timeout_s:.0f} s"
            raise AsftError(f"stack: {service.name} {state}: {tail[0][:300]} (log: {log})")
        time.sleep(0.5)


def _stop(config: StackConfig, name: str, grace_s: float = 20.0) -> bool:
    pid = _running(config, name)
    if pid is None:
        _pid_file(config, name).unlink(missing_ok=True)
        return False
    # its own session: the server and the processes it started; PostgreSQL's fast shutdown is
    # SIGINT (on SIGTERM it waits for every client to disconnect)
    os.killpg(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _running(config, name) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _running(config, name):
        os.killpg(pid, signal.SIGKILL)
    _pid_file(config, name).unlink(missing_ok=True)
    return True


def _run(argv: list[str], env: dict[str, str], what: str, user: str | None = None) -> None:
    done = subprocess.run(argv, env={**os.environ, **env}, cwd=CODE_DIR, capture_output=True, text=True,
                          user=user, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise AsftError(f"stack: {what} failed (exit {done.returncode}): {last[0][:300]}")


# --- setting up what the services hold -----------------------------------------------------

def _init_postgres(config: StackConfig, user: str | None) -> None:
    """A cluster that trusts loopback connections of DB_USER (this stack listens on 127.0.0.1 only)."""
    data = config.folder / "postgres"
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(data, user)
    _run([_postgres_bin("initdb"), "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8"], {},
         f"initdb in {data} (as {user or 'this user'}; it must be able to reach that folder)", user=user)


def _create_databases(config: StackConfig) -> None:
    for name in ("prefect", "mlflow"):
        probe = subprocess.run([_postgres_bin("psql"), "-h", HOST, "-p", str(config.postgres_port), "-U", DB_USER,
                                "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
                               capture_output=True, text=True, check=False)
        if probe.stdout.strip() != "1":
            _run([_postgres_bin("createdb"), "-h", HOST, "-p", str(config.postgres_port), "-U", DB_USER, name], {},
                 f"createdb {name}")


def _create_buckets(config: StackConfig, env: dict[str, str]) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in {config.bucket, config.mlflow_bucket} - existing:
        s3.create_bucket(Bucket=bucket)


def _deploy(env: dict[str, str]) -> None:
    """The work pools from deployments/work-pools/, then every deployment of deployments/prefect.yaml."""
    prefect = _bin("prefect")
    for pool, template in POOLS.items():
        _run([prefect, "work-pool", "create", pool, "--type", "process", "--overwrite",
              "--base-job-template", str(CODE_DIR / "deployments" / "work-pools" / template)], env, f"creating pool {pool}")
    # the build step (flows.deploy_check) runs `python`: this environment's
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    _run([prefect, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"],
         {**env, "PATH": path}, "prefect deploy")


# --- the commands --------------------------------------------------------------------------

def up(config: StackConfig, progress: Callable[[str], None] = print, timeout_s: float = 180.0) -> dict[str, str]:
    """Start (or keep) every service; returns the stack's environment."""
    for folder in ("logs", "pids"):
        (config.folder / folder).mkdir(parents=True, exist_ok=True)
    env = environment(config)
    services = {s.name: s for s in _services(config)}
    started = time.perf_counter()
    _init_postgres(config, services["postgres"].user)
    for name in ("postgres", "s3"):
        _start(config, services[name], env, timeout_s)
        progress(f"stack: {name} ready ({time.perf_counter() - started:.0f} s)")
    _create_databases(config)
    _create_buckets(config, env)
    for name in ("prefect-server", "mlflow"):
        _start(config, services[name], env, timeout_s)
        progress(f"stack: {name} ready ({time.perf_counter() - started:.0f} s)")
    if config.workers:
        _deploy(env)
        for worker in _workers(config):
            _start(config, worker, env, timeout_s)
        progress(f"stack: pools, deployments and workers ready ({time.perf_counter() - started:.0f} s)")
    progress(f"stack: Prefect UI http://{HOST}:{config.prefect_port}   MLflow http://{HOST}:{config.mlflow_port}   "
             f"S3 {env['AWS_ENDPOINT_URL']}")
    return env


def down(config: StackConfig) -> list[str]:
    """Stop every service this stack started, workers first; returns the names stopped."""
    names = [w.name for w in _workers(config)] + ["mlflow", "prefect-server", "s3", "postgres"]
    return [name for name in names if _stop(config, name)]


def shell_exports(env: dict[str, str]) -> str:
    import shlex

    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
