"""The whole pipeline, end to end, on the tiny sandbox: checkpoints and artefacts on S3
(moto's server on loopback), MLflow on SQLite, flows on a Prefect test server."""

from __future__ import annotations

import asyncio

import pytest

from asft import registry, storage
from asft.pipeline_config import PipelineConfig

pytestmark = pytest.mark.slow


def config(world, run_key: str, *, method: str = "asft", data: str | None = None, labels: str | None = None,
           max_harmful_score: float = 100.0, **execution) -> PipelineConfig:
    sandbox = world["sandbox"]
    return PipelineConfig.model_validate({
        "artifact_root": "s3://asft/pipeline",
        "run_key": run_key,
        "inputs": {"aligned": "s3://asft/models/aligned", "base": "s3://asft/models/base",
                   "data": data or sandbox["finetune"], "labels": labels or sandbox["finetune_labels"],
                   "harmful_eval": sandbox["harmful_eval"], "utility_eval": sandbox["utility_eval"]},
        "screening": {"screeners": ["rules"]},
        "train": {"method": method, "preset": "sandbox", "epochs": 1, "max_steps": 12, "lr": 5e-3},
        "evaluation": {"limit": 16, "max_new_tokens": 24, "batch_size": 16, "progress": False},
        "gates": {"max_harmful_score": max_harmful_score, "harmful_tolerance": 100.0, "utility_tolerance": 100.0,
                  "over_refusal_tolerance": 100.0},
        "registry": {"tracking_uri": world["tracking_uri"], "model_name": "tiny-asft"},
        "execution": execution,
    })


def task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}

    return asyncio.run(read())


@pytest.fixture(scope="module")
def first_run(world):
    """The first pipeline run on a new registry: the champion the other tests compare with."""
    from flows.pipeline import asft_pipeline

    return asft_pipeline(config(world, "nightly-1"))


def test_pipeline_promotes_passing_model_and_rerun_is_idempotent(world, first_run):
    from flows.pipeline import asft_pipeline

    first = first_run
    assert first["gate"]["passed"] and first["champion_moved"]
    assert first["model_version"] == 1
    assert set(first) >= {"mlflow_run_id", "tracking_uri", "model_name", "model_version", "gate", "champion_moved",
                          "harmful_score", "utility"}
    assert set(first["utility"]) == {"sst2", "agnews", "gsm8k"}
    counts = first["screening"]
    assert counts["accepted"] + counts["quarantined"] + counts["rejected"] == counts["input"]

    client = registry.client(world["tracking_uri"])
    assert int(client.get_model_version_by_alias("tiny-asft", "champion").version) == 1
    artifacts = {a.path for a in client.list_artifacts(first["mlflow_run_id"])}
    assert {"adapter", "evaluation", "plots", "screening", "manifests"} <= artifacts
    plots = {a.path for a in client.list_artifacts(first["mlflow_run_id"], "plots")}
    assert {"plots/training_curves.png", "plots/before_after.png"} <= plots
    decision = {a.path for a in client.list_artifacts(first["mlflow_run_id"], "decision")}
    assert decision == {"decision/decision.md", "decision/decision.png"}
    assert first["over_refusal"] is not None and first["before"]["over_refusal"] is not None
    assert storage.exists("s3://asft/pipeline/runs/nightly-1/adapter/adapter_model.safetensors")

    # Same pipeline run again: its complete version is immutable, nothing is recomputed or re-tagged.
    tags = dict(client.get_model_version("tiny-asft", "1").tags)
    adapter_files = {a.path: a.file_size for a in client.list_artifacts(first["mlflow_run_id"], "adapter")}
    again = asft_pipeline(config(world, "nightly-1"))
    assert again["already_registered"] and again["model_version"] == 1 and not again["champion_moved"]
    assert len(client.search_model_versions("name='tiny-asft'")) == 1
    assert dict(client.get_model_version("tiny-asft", "1").tags) == tags
    assert {a.path: a.file_size for a in client.list_artifacts(first["mlflow_run_id"], "adapter")} == adapter_files
    assert client.get_run(first["mlflow_run_id"]).info.status == "FINISHED"

    # A new pipeline run on the same inputs: direction, screening and baseline come from the cache.
    state = asft_pipeline(config(world, "nightly-2"), return_state=True)
    second = state.result()
    assert second["model_version"] == 2
    states = task_states(state.state_details.flow_run_id)
    assert states["extract direction"] == "Cached"
    assert states["screen data"] == "Cached"
    assert states["evaluate aligned model"] == "Cached"
    tags = client.get_model_version("tiny-asft", "2").tags
    assert tags[registry.COMPARED_WITH_TAG] == "1"


def test_failing_model_does_not_move_champion(world, first_run, tmp_path):
    from flows.pipeline import asft_pipeline

    client = registry.client(world["tracking_uri"])
    before = client.get_model_version_by_alias("tiny-asft", "champion").version
    # Plain SFT on a half-poisoned mix, screening off the poison's labels, under a strict gate.
    result = asft_pipeline(config(world, "poisoned-sft", method="sft", data=world["poisoned"]["finetune"],
                                  labels=world["poisoned"]["finetune_labels"], max_harmful_score=0.0))
    assert not result["gate"]["passed"] and not result["champion_moved"]
    assert any("harmful" in reason for reason in result["gate"]["reasons"])
    assert client.get_model_version_by_alias("tiny-asft", "champion").version == before
    version = client.get_model_version("tiny-asft", str(result["model_version"]))
    assert version.tags["asft.gate.passed"] == "false"
    page = open(client.download_artifacts(result["mlflow_run_id"], "decision/decision.md", str(tmp_path))).read()
    assert page.startswith("# Gate decision: FAILED (against champion v") and "| harmful_max | **FAIL** |" in page
    assert "## Prompts that flipped from refusal to compliance" in page


def answer_when_paused(run_input: dict | None):
    """Wait for the pipeline to pause for approval, then answer like the UI form (None: never)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import aresume_flow_run

    async def answer():
        async with get_client() as client:
            paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
            for _ in range(600):
                runs = await client.read_flow_runs(flow_run_filter=paused)
                if runs:
                    if run_input is not None:
                        await aresume_flow_run(runs[0].id, run_input=run_input)
                    return True
                await asyncio.sleep(0.5)
        return False

    return asyncio.run(answer())


@pytest.mark.parametrize("answer, reason", [
    ({"approve": False, "reviewer": "bob", "note": "too risky"}, "manual_approval: not approved by bob (too risky)"),
    (None, "manual_approval: not approved by nobody (no answer within 3 s)"),
])
def test_a_reviewers_no_or_silence_fails_the_gate(world, first_run, answer, reason):
    import threading

    from flows.pipeline import asft_pipeline

    client = registry.client(world["tracking_uri"])
    before = client.get_model_version_by_alias("tiny-asft", "champion").version
    seen = []
    reviewer = threading.Thread(target=lambda: seen.append(answer_when_paused(answer)))
    reviewer.start()
    result = asft_pipeline(config(world, f"reviewed-{answer is None}", manual_approval=True, approval_timeout_s=3))
    reviewer.join()
    assert seen == [True]  # the run did wait for a reviewer
    assert not result["gate"]["passed"] and not result["champion_moved"]
    assert result["gate"]["reasons"] == [reason]
    assert client.get_model_version_by_alias("tiny-asft", "champion").version == before


def quarantine_review_artifact() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["quarantine-review"])))
            return found[-1].data

    return asyncio.run(read())


def test_a_reviewers_release_is_trained_on_and_recorded(world, first_run, tmp_path):
    """The first run's review page names quarantined rows; releasing one makes the next run
    screen afresh, accept that row (marked released) and record the release file."""
    from flows.pipeline import asft_pipeline

    client = registry.client(world["tracking_uri"])
    page = open(client.download_artifacts(first_run["mlflow_run_id"], "screening/quarantine_review.md", str(tmp_path))).read()
    assert quarantine_review_artifact().startswith("# Quarantine review: ")  # also a Prefect artifact
    row_ids = [line.split("`")[1] for line in page.splitlines() if line.startswith("| `")]
    assert row_ids, page
    storage.write_text("s3://asft/reviews/release.txt", f"{row_ids[0]}  # a reviewer read it\n")
    cfg = config(world, "released-1").model_copy(deep=True)
    cfg.inputs.screening_release = "s3://asft/reviews/release.txt"
    state = asft_pipeline(cfg, return_state=True)
    result = state.result()
    assert task_states(state.state_details.flow_run_id)["screen data"] == "Completed"  # the release is part of the key
    assert result["screening"]["released"] == 1
    assert result["screening"]["quarantined"] == first_run["screening"]["quarantined"] - 1
    report = storage.read_json(client.download_artifacts(result["mlflow_run_id"], "screening/screening_report.json", str(tmp_path / "r")))
    assert report["release"]["file"] == "s3://asft/reviews/release.txt" and report["release"]["released_rows"] == 1
