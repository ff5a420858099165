"""End to end on the real team stack (``asft stack up``): runs are created through Prefect's
REST API as the UI creates them, the pipeline runs on the ``asft-cpu`` process worker and
dispatches training and evaluation with ``run_deployment`` to the ``asft-gpu-process`` worker;
MLflow is a server on PostgreSQL, artefacts are on S3 (moto)."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone

from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.stack]

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"  # kept for a person to look at
MODEL = "stack-asft"


class PrefectAPI:
    """The few REST calls the Prefect UI makes to start and follow runs."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url.rstrip("/") + "/", timeout=30)

    def deployment(self, name: str) -> dict:
        return self._ok(self.http.get(f"deployments/name/{name}"))

    def create_run(self, deployment: dict, parameters: dict | None = None, state: dict | None = None) -> dict:
        body = {} if parameters is None else {"parameters": parameters}
        return self._ok(self.http.post(f"deployments/{deployment['id']}/create_flow_run", json={**body, **({"state": state} if state else {})}))

    def run(self, run_id: str) -> dict:
        return self._ok(self.http.get(f"flow_runs/{run_id}"))

    def runs(self, deployment: dict, **flow_runs_filter) -> list[dict]:
        body = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}, **flow_runs_filter}, "sort": "START_TIME_ASC"}
        return self._ok(self.http.post("flow_runs/filter", json=body))

    def states(self, run_id: str) -> list[str]:
        return [s["name"] for s in self._ok(self.http.get("flow_run_states/", params={"flow_run_id": run_id}))]

    def wait(self, run_id: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while (run := self.run(run_id))["state"]["type"] not in TERMINAL:
            assert time.monotonic() < deadline, f"run {run_id} still {run['state']['name']} after {timeout_s} s"
            time.sleep(2)
        return run

    def cancel(self, run_id: str) -> None:
        self._ok(self.http.post(f"flow_runs/{run_id}/set_state", json={"state": {"type": "CANCELLED"}, "force": True}))

    @staticmethod
    def _ok(response: httpx.Response):
        assert response.status_code < 300, f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:500]}"
        return response.json()


@pytest.fixture(scope="module")
def api(team_stack) -> PrefectAPI:
    return PrefectAPI(team_stack[1]["PREFECT_API_URL"])


def pipeline_parameters(env: dict, run_key: str, **gates) -> dict:
    """A small pipeline on the tiny sandbox with the heavy steps on the GPU pool."""
    return {"config": {
        "artifact_root": env["ASFT_ARTIFACT_ROOT"], "run_key": run_key, "sandbox": {"size": "tiny"},
        "screening": {"screeners": ["rules"]},
        "train": {"max_steps": 12},
        "evaluation": {"limit": 16, "max_new_tokens": 24, "batch_size": 16, "progress": False},
        "gates": {"harmful_tolerance": 100.0, "utility_tolerance": 100.0, "over_refusal_tolerance": 100.0,
                  "max_harmful_score": 100.0, **gates},
        "registry": {"model_name": MODEL},
        "execution": {"train_deployment": "train-on-gpu/asft-train-gpu",
                      "evaluate_deployment": "evaluate-on-gpu/asft-evaluate-gpu"},
    }}


def mlflow_client(env: dict):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])


def s3_keys(env: dict, bucket: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def postgres_rows(config, sql: str) -> list[str]:
    from flows.stack import DB_USER, HOST, _postgres_bin

    done = subprocess.run([_postgres_bin("psql"), "-h", HOST, "-p", str(config.postgres_port), "-U", DB_USER,
                           "-d", "mlflow", "-tAc", sql], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.fixture(scope="module")
def champion_run(team_stack, api):
    config, env = team_stack
    manual = api.deployment("asft-pipeline/asft-manual")
    created = api.create_run(manual, pipeline_parameters(env, "stack-champion"))
    return api.wait(created["id"], timeout_s=1200)


def test_manual_run_trains_on_the_gpu_pool_and_registers_a_champion(team_stack, api, champion_run):
    config, env = team_stack
    assert champion_run["state"]["type"] == "COMPLETED", champion_run["state"]["message"]
    assert champion_run["work_pool_name"] == "asft-cpu"
    for name in ("train-on-gpu/asft-train-gpu", "evaluate-on-gpu/asft-evaluate-gpu"):
        remote = api.runs(api.deployment(name))
        assert remote and {r["work_pool_name"] for r in remote} == {"asft-gpu-process"}
        assert {r["state"]["type"] for r in remote} == {"COMPLETED"}
    assert len(api.runs(api.deployment("evaluate-on-gpu/asft-evaluate-gpu"))) == 2  # aligned model and candidate

    champion = mlflow_client(env).get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert postgres_rows(config, f"SELECT version FROM registered_model_aliases WHERE name = '{MODEL}' AND alias = 'champion'") == ["1"]
    adapter = s3_keys(env, config.bucket, "pipeline/runs/stack-champion/adapter/")
    assert any(key.endswith("adapter_model.safetensors") for key in adapter), adapter
    # the model version's files went through the MLflow server into its S3 bucket
    assert any("adapter" in key for key in s3_keys(env, config.mlflow_bucket, ""))


def test_failing_candidate_leaves_the_champion(team_stack, api, champion_run):
    config, env = team_stack
    manual = api.deployment("asft-pipeline/asft-manual")
    # no upper confidence bound is below 0 %: the gate fails whatever the model does
    created = api.create_run(manual, pipeline_parameters(env, "stack-failing", max_harmful_score=0.0))
    finished = api.wait(created["id"], timeout_s=1200)
    assert finished["state"]["type"] == "COMPLETED", finished["state"]["message"]
    client = mlflow_client(env)
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    versions = {v.version for v in client.search_model_versions(f"name='{MODEL}'")}
    assert versions == {"1", "2"}  # registered for the record, not promoted


def test_nightly_is_scheduled_at_two_utc_and_never_overlaps(team_stack, api):
    config, env = team_stack
    nightly = api.deployment("asft-pipeline/asft-nightly")
    scheduled = api.runs(nightly, state={"type": {"any_": ["SCHEDULED"]}})
    assert len(scheduled) >= 2
    starts = sorted(datetime.fromisoformat(r["expected_start_time"]) for r in scheduled)
    assert all((s.astimezone(timezone.utc).hour, s.minute, s.second) == (2, 0, 0) for s in starts), starts
    assert all(later - earlier == timedelta(days=1) for earlier, later in zip(starts, starts[1:]))

    # two runs at once: the second waits for the first's slot (they fail fast at preflight)
    broken = {"config": {"artifact_root": env["ASFT_ARTIFACT_ROOT"],
                         "inputs": {"data": f"s3://{config.bucket}/incoming/missing.jsonl"}}}
    first, second = (api.create_run(nightly, broken) for _ in range(2))
    ended = [api.wait(r["id"], timeout_s=300) for r in (first, second)]
    assert {r["state"]["type"] for r in ended} == {"FAILED"}
    one, two = sorted(ended, key=lambda r: r["start_time"])
    assert datetime.fromisoformat(one["end_time"]) <= datetime.fromisoformat(two["start_time"])
    assert "AwaitingConcurrencySlot" in api.states(two["id"])


def resolved_training(parameters: dict) -> dict:
    """The training settings a run with these parameters would use (presets applied)."""
    from asft import jobs
    from asft.pipeline_config import PipelineConfig
    from asft.training import TrainConfig
    from flows.steps import train_settings

    config = PipelineConfig.model_validate(parameters.get("config", {}))
    locations = {"model": "m", "data": "d", "direction": "v", "out": "o"}
    return jobs.TRAINING.settings(TrainConfig.model_validate({**train_settings(config), **locations}))


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_custom_run_form_in_a_browser_trains_like_a_quick_run(team_stack, api, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    config, env = team_stack
    manual = api.deployment("asft-pipeline/asft-manual")
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    browser.get(f"{ui}/deployments/deployment/{manual['id']}/run")
    wait = WebDriverWait(browser, 60)
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "body"), "AdamW learning rate"))
    page = browser.find_element(By.TAG_NAME, "body").text
    for description in ("A whole run: direction -> screening -> training -> evaluation -> gated registration.",
                        "Fine-tuning method and hyper-parameters (empty ones come from the preset).",
                        "AdamW learning rate. Empty: from the preset.", "Folder or URI (s3://bucket/prefix) for every artefact"):
        assert description in page
    assert 'Property is type "None"' not in page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "prefect-custom-run-form.png"))

    before = {r["id"] for r in api.runs(manual)}
    (submit,) = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit"]
    browser.execute_script("arguments[0].scrollIntoView(true);", submit)
    submit.click()
    wait.until(lambda _: {r["id"] for r in api.runs(manual)} - before)
    (custom,) = [r for r in api.runs(manual) if r["id"] not in before]
    api.cancel(custom["id"])  # the form's default is the full sandbox run: what it trains is all we need
    later = {"type": "SCHEDULED", "state_details": {"scheduled_time": "2099-01-01T00:00:00Z"}}
    quick = api.create_run(manual, state=later)  # the "Quick run" button: the deployment's parameters
    api.cancel(quick["id"])
    assert resolved_training(custom["parameters"]) == resolved_training(quick["parameters"])
    assert resolved_training(quick["parameters"])["lr"] == 5e-3  # the sandbox preset, not the paper's 5e-5


def test_prefect_deploy_fails_when_a_variable_is_missing(team_stack, api):
    import os
    import sys

    from flows.stack import CODE_DIR

    config, env = team_stack
    before = api.deployment("asft-pipeline/asft-manual")
    unset = {k: v for k, v in {**os.environ, **env}.items() if k != "ASFT_CODE_DIR"}
    unset["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    done = subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--prefect-file",
                           "deployments/prefect.yaml", "--all"], cwd=CODE_DIR, env=unset, capture_output=True,
                          text=True, check=False, timeout=300)
    assert done.returncode != 0
    assert "asft deploy: ASFT_CODE_DIR is not set" in done.stdout + done.stderr
    after = api.deployment("asft-pipeline/asft-manual")
    assert after["updated"] == before["updated"] and after["pull_steps"] == before["pull_steps"]
