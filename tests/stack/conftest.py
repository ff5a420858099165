"""The team stack of ``asft stack up`` (PostgreSQL, moto S3, MLflow and Prefect servers, pools,
deployments, process workers), started once for the tests of this folder on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def team_stack():
    from flows import stack

    if shutil.which("postgres") is None and not list(stack.Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        pytest.fail("the team-stack tests need PostgreSQL: apt-get install postgresql (README, 'Install')")
    # not under pytest's tmp folder: PostgreSQL runs as its own user when we are root, and
    # pytest's folders are private to us
    root = tempfile.mkdtemp(prefix="asft-stack-")
    os.chmod(root, 0o755)
    config = stack.StackConfig(root=root, postgres_port=_free_port(), s3_port=_free_port(),
                               mlflow_port=_free_port(), prefect_port=_free_port())
    try:
        yield config, stack.up(config, progress=lambda line: None, timeout_s=300)
    finally:
        stack.down(config)
        shutil.rmtree(root, ignore_errors=True)
