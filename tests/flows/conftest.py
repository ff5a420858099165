"""A Prefect test server for the flow tests (the S3 endpoint is in tests/conftest.py), and the
world they run in: the tiny sandbox's checkpoints on S3 and a MLflow store per module."""

from __future__ import annotations

import pytest

from asft import registry, storage
from asft.sandbox import write_mixture


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def world(tiny_sandbox, s3_endpoint, prefect_server, tmp_path_factory):
    """The tiny sandbox with its checkpoints uploaded to S3, and a MLflow store."""
    for name in ("aligned", "base"):
        storage.upload_dir(tiny_sandbox[name], f"s3://asft/models/{name}")
    poisoned = write_mixture(tiny_sandbox["out"], harmful_ratio=0.5)
    return {"sandbox": tiny_sandbox, "poisoned": poisoned,
            "tracking_uri": registry.embedded_tracking_uri(tmp_path_factory.mktemp("mlflow"))}
