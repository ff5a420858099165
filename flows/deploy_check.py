"""``python -m flows.deploy_check``: the variables ``prefect deploy`` reads, checked first.

deployments/prefect.yaml runs this as its build step, so a deploy with a variable missing
fails before anything is stored (Prefect itself only warns and stores an empty string).
Which variables are needed depends on the GPU pool: container pools need an image, the
docker pool a credentials file to mount.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ALWAYS = {
    "ASFT_CODE_DIR": "where the code lives on the workers (/opt/asft in the images, the checkout for process workers)",
    "ASFT_GPU_POOL": "the GPU work pool: " + ", ".join(("asft-gpu-docker", "asft-gpu-k8s", "asft-gpu-process")),
    "ASFT_ARTIFACT_ROOT": "where runs keep their artefacts, e.g. s3://asft/pipeline",
    "MLFLOW_TRACKING_URI": "the MLflow server as the flow runs see it, e.g. http://mlflow:5000",
    "AWS_ENDPOINT_URL": "the S3 endpoint as the flow runs see it (https://s3.<region>.amazonaws.com on AWS)",
}
BY_POOL = {
    "asft-gpu-docker": {"ASFT_WORKER_IMAGE": "the worker image the GPU flow runs start from",
                        "ASFT_AWS_CREDENTIALS_FILE": "host path of the AWS credentials file mounted into GPU containers"},
    "asft-gpu-k8s": {"ASFT_WORKER_IMAGE": "the worker image the GPU flow runs start from"},
    "asft-gpu-process": {},
}


def problems(env: dict[str, str]) -> list[str]:
    """Every variable that is missing or wrong, one line each."""
    found = [f"{name} is not set: {why}" for name, why in ALWAYS.items() if not env.get(name)]
    pool = env.get("ASFT_GPU_POOL")
    if pool and pool not in BY_POOL:
        found.append(f"ASFT_GPU_POOL={pool} is not a pool of deployments/work-pools/; use {', '.join(BY_POOL)}")
    found += [f"{name} is not set: {why}" for name, why in BY_POOL.get(pool or "", {}).items() if not env.get(name)]
    credentials = env.get("ASFT_AWS_CREDENTIALS_FILE")
    if pool == "asft-gpu-docker" and credentials and not Path(credentials).is_file():
        found.append(f"ASFT_AWS_CREDENTIALS_FILE={credentials}: no such file on this host (docker/README.md says how to make it)")
    return found


def main() -> int:
    found = problems(dict(os.environ))
    for line in found:
        print(f"asft deploy: {line}", file=sys.stderr)
    if found:
        print("asft deploy: nothing was deployed; export the variables (docker/.env, or `eval \"$(asft stack env)\"`) "
              "and run prefect deploy again", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
