"""A Prefect test server for the flow tests (the S3 endpoint is in tests/conftest.py);
MLflow runs on a SQLite file per test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
