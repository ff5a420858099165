"""deployments/: prefect.yaml and the work-pool base job templates, checked with Prefect's own models."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = ROOT / "deployments"
POOLS = DEPLOYMENTS / "work-pools"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def deployments(config) -> dict:
    return {d["name"]: d for d in config["deployments"]}


def test_prefect_yaml_validates_with_prefects_model(config):
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(config)
    assert {d.name for d in model.deployments} == {"asft-nightly", "asft-manual", "asft-train-gpu", "asft-evaluate-gpu"}


def test_entrypoints_and_pools(deployments):
    from flows.deploy_check import BY_POOL

    expected = {
        "asft-nightly": ("flows/pipeline.py:asft_pipeline", "asft-cpu"),
        "asft-manual": ("flows/pipeline.py:asft_pipeline", "asft-cpu"),
        "asft-train-gpu": ("flows/gpu.py:train_on_gpu", "{{ $ASFT_GPU_POOL }}"),
        "asft-evaluate-gpu": ("flows/gpu.py:evaluate_on_gpu", "{{ $ASFT_GPU_POOL }}"),
    }
    for name, (entrypoint, pool) in expected.items():
        assert deployments[name]["entrypoint"] == entrypoint
        assert deployments[name]["work_pool"]["name"] == pool
    for pool in ["asft-cpu", *BY_POOL]:  # every pool a deployment can name has its base job template
        assert len(list(POOLS.glob(f"{pool}.*.json"))) == 1, pool
    gpu_env = deployments["asft-train-gpu"]["work_pool"]["job_variables"]["env"]
    assert not any("SECRET" in key or "PASSWORD" in key for key in gpu_env)


def test_the_gpu_job_variables_are_what_the_gpu_templates_declare(deployments):
    """num_gpus (what a multi-GPU run overrides) is a variable of both container templates, with
    the bounds the deployment's default meets."""
    variables = deployments["asft-train-gpu"]["work_pool"]["job_variables"]
    for name in ("asft-gpu-docker.docker.json", "asft-gpu-k8s.kubernetes.json"):
        declared = json.loads((POOLS / name).read_text())["variables"]["properties"]
        assert declared["num_gpus"]["type"] == "integer" and declared["num_gpus"]["default"] == 1
        assert variables["num_gpus"] >= declared["num_gpus"]["minimum"]
        assert "gpu_count" not in declared


def test_no_machine_path_or_host_name_is_hard_coded(config, deployments):
    """Code location, services and artefact root are variables, read at deploy time."""
    (pull,) = config["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $ASFT_CODE_DIR }}"
    for name in ("asft-nightly", "asft-manual"):
        assert deployments[name]["parameters"]["config"]["artifact_root"] == "{{ $ASFT_ARTIFACT_ROOT }}"
        assert "registry" not in deployments[name]["parameters"]["config"]  # MLFLOW_TRACKING_URI decides
    assert deployments["asft-nightly"]["parameters"]["config"]["inputs"] == {"data_window": "new"}
    text = (DEPLOYMENTS / "prefect.yaml").read_text()
    assert "/opt/asft" not in text.split("definitions:")[1] and "mlflow:5000" not in text and "minio" not in text
    for path in POOLS.glob("*.process.json"):
        assert _render(json.loads(path.read_text()))["working_dir"] is None  # the pull step decides


def test_deploy_check_names_every_missing_variable():
    from flows.deploy_check import problems

    complete = {"ASFT_CODE_DIR": "/srv/asft", "ASFT_GPU_POOL": "asft-gpu-process", "ASFT_ARTIFACT_ROOT": "s3://a/p",
                "MLFLOW_TRACKING_URI": "http://m:5000", "AWS_ENDPOINT_URL": "http://s3:9000"}
    assert problems(complete) == []
    missing = problems({k: v for k, v in complete.items() if k != "ASFT_CODE_DIR"})
    assert len(missing) == 1 and missing[0].startswith("ASFT_CODE_DIR is not set")
    docker = problems({**complete, "ASFT_GPU_POOL": "asft-gpu-docker"})
    assert [line.split()[0] for line in docker] == ["ASFT_WORKER_IMAGE", "ASFT_AWS_CREDENTIALS_FILE"]
    assert "no such file" in problems({**complete, "ASFT_GPU_POOL": "asft-gpu-docker", "ASFT_WORKER_IMAGE": "i:1",
                                       "ASFT_AWS_CREDENTIALS_FILE": "/nonexistent/credentials"})[0]
    assert "not a pool" in problems({**complete, "ASFT_GPU_POOL": "gpu"})[0]
    assert problems({**complete, "ASFT_GPU_POOL": "asft-gpu-k8s", "ASFT_WORKER_IMAGE": "i:1"}) == []


def test_nightly_schedule_is_daily_at_two_utc_and_never_overlaps(deployments):
    from prefect.cli.deploy._models import ConcurrencyLimitSpec, RawScheduleConfig
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    nightly = deployments["asft-nightly"]
    (raw,) = [RawScheduleConfig.model_validate(s) for s in nightly["schedules"]]
    schedule = CronSchedule(cron=raw.cron, timezone=raw.timezone)
    assert schedule.timezone == "UTC"
    from cronsim import CronSim

    start = datetime(2026, 3, 28, 12, 0, tzinfo=timezone.utc)  # across the EU DST switch: UTC does not move
    runs = CronSim(schedule.cron, start)
    fires = [next(runs) for _ in range(3)]
    assert fires == [datetime(2026, 3, d, 2, 0, tzinfo=timezone.utc) for d in (29, 30, 31)]
    limit = ConcurrencyLimitSpec.model_validate(nightly["concurrency_limit"])
    assert limit.limit == 1
    assert ConcurrencyLimitStrategy(limit.collision_strategy) == ConcurrencyLimitStrategy.ENQUEUE
    for name in ("asft-manual", "asft-train-gpu", "asft-evaluate-gpu"):
        assert deployments[name]["schedules"] == []


def _render(template: dict, overrides: dict | None = None) -> dict:
    """What a worker gets: the job configuration with variable defaults (and overrides) filled in."""
    from prefect.utilities.templating import apply_values

    values = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    return apply_values(template["job_configuration"], {**values, **(overrides or {})})


@pytest.mark.parametrize("path", sorted(POOLS.glob("*.json")), ids=lambda p: p.name)
def test_base_job_templates_are_accepted_by_the_server_schema(path):
    from prefect.server.schemas.actions import WorkPoolCreate

    template = json.loads(path.read_text())
    pool_type = path.name.split(".")[-2]
    # The server's validator checks that every {{ placeholder }} has a declared variable.
    WorkPoolCreate(name=path.name.split(".")[0], type=pool_type, base_job_template=template)


def test_process_template_matches_prefects_default_shape():
    from prefect.workers.process import ProcessWorker

    ours = json.loads((POOLS / "asft-cpu.process.json").read_text())
    default = ProcessWorker.get_default_base_job_template()
    assert ours["job_configuration"] == default["job_configuration"]
    gpu = json.loads((POOLS / "asft-gpu-process.process.json").read_text())
    assert gpu == ours  # a process worker on a GPU host runs flows the same way


def test_docker_template_requests_gpus_in_a_form_docker_accepts():
    from docker.types import HostConfig

    template = json.loads((POOLS / "asft-gpu-docker.docker.json").read_text())
    job = _render(template)
    kwargs = job["container_create_kwargs"]
    assert kwargs["device_requests"] == [{"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}]
    host = HostConfig(version="1.41", device_requests=kwargs["device_requests"], shm_size=kwargs["shm_size"])
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    assert host["ShmSize"] == 16 * 1024**3
    assert _render(template, {"num_gpus": -1})["container_create_kwargs"]["device_requests"][0]["count"] == -1
    assert job["networks"] == ["asft"] and ":latest" not in job["image"]
    two = _render(template, {"num_gpus": 2})["container_create_kwargs"]["device_requests"]
    assert HostConfig(version="1.41", device_requests=two)["DeviceRequests"][0]["Count"] == 2


def test_kubernetes_template_asks_for_nvidia_gpus():
    template = json.loads((POOLS / "asft-gpu-k8s.kubernetes.json").read_text())
    job = _render(template, {"num_gpus": 2, "node_selector": {"gpu": "h100"}})
    manifest = job["job_manifest"]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job"  # the kubernetes worker looks the container up by this name
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["envFrom"] == [{"secretRef": {"name": "asft-credentials", "optional": True}}]
    assert _render(template)["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_flow_parameter_schemas_build_when_the_flows_exist(deployments):
    """Each entrypoint's flow must give Prefect a parameter schema (the UI form); the flows are the lead's."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    present = [d for d in deployments.values() if (ROOT / d["entrypoint"].split(":")[0]).is_file()]
    if not present:
        pytest.skip("flows/ has no entrypoint files yet")
    for deployment in present:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        assert list(schema["properties"]) == (["config", "num_gpus"] if flow.fn.__name__ == "train_on_gpu" else ["config"])
        models = schema["definitions"]
        expected = {"asft_pipeline": {"PipelineConfig", "TrainSettings", "ScreenSettings", "GateConfig"},
                    "train_on_gpu": {"TrainConfig"}, "evaluate_on_gpu": {"EvalConfig", "JudgeConfig"}}
        assert expected[flow.fn.__name__] <= set(models)
        train = models.get("TrainSettings") or models["TrainConfig"] if flow.fn.__name__ != "evaluate_on_gpu" else None
        if train:  # the UI form shows the method choice and the documented, bounded hyper-parameters
            assert train["properties"]["method"]["enum"] == ["sft", "asft", "safelora", "safeinstr", "lisa"]
            assert train["properties"]["lr"]["exclusiveMinimum"] == 0 and train["properties"]["lr"]["description"]
        parameters = deployment.get("parameters") or {}
        if parameters:  # a deployment's own parameters must validate against the flow's models
            from asft.pipeline_config import PipelineConfig

            PipelineConfig.model_validate(parameters["config"])
