"""Test environment: offline, no telemetry, a private Prefect home, small thread pools.

Set before any test module imports mlflow, prefect or transformers.
"""

from __future__ import annotations

import os
import socket
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="asft-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("ASFT_CACHE_DIR", tempfile.mkdtemp(prefix="asft-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# xdist runs one worker per core: one thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bench_data():
    """The paper's asft-bench folder (ASFT_BENCH_DATA); tests using it skip when unset."""
    from pathlib import Path

    folder = os.environ.get("ASFT_BENCH_DATA")
    if not folder or not Path(folder).is_dir():
        pytest.skip("ASFT_BENCH_DATA is not set to the asft-bench folder")
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_sandbox(tmp_path_factory):
    """The tiny sandbox (real base/aligned Llama models + data), built once per test session,
    shared by all xdist workers through a file lock. Returns ``build_sandbox``'s summary."""
    from filelock import FileLock

    from asft.sandbox import SandboxConfig, build_sandbox

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with FileLock(str(root / "tiny-sandbox.lock")):
        return build_sandbox(SandboxConfig(size="tiny"), str(root / "tiny-sandbox"))


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from asft import storage

    fs, _ = storage.filesystem("s3://asft")
    fs.mkdir("asft")
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
