"""Prefect tasks: thin wrappers around the asft library.

Each task takes URIs and small settings and returns a small JSON-able manifest; models and
tensors never pass through Prefect. Expensive, deterministic steps (direction, screening,
the aligned model's own evaluation) are content-addressed: their output location and their
Prefect cache key are a hash of their inputs' *content*, so an unchanged nightly run reuses
them. Results are persisted as JSON (Prefect's default serializer is pickle, which asft
never loads).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.deployments import run_deployment

from asft import registry, storage
from asft.errors import AsftError


def transient(task, task_run, state) -> bool:
    """Retry failures of the world (network, storage), never a user error."""
    try:
        state.result()
    except AsftError:
        return False
    except Exception:
        return True
    return False


IO_RETRIES = dict(retries=3, retry_delay_seconds=[2, 10, 30], retry_jitter_factor=0.2, retry_condition_fn=transient)
OUTPUT_KIND = {"extract direction": "direction", "screen data": "screening", "evaluate aligned model": "evaluation"}
CACHED = dict(persist_result=True, result_serializer="json", cache_key_fn=lambda ctx, params: params["key"])


def content_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts (content hashes and settings)."""
    return storage.sha256_json(parts)[:20]


def cached(step, out: str):
    """``step`` with Prefect's cache refreshed when its output is gone: a deleted artefact
    must be rebuilt, not served from a stale cache record."""
    done = storage.is_complete(out, OUTPUT_KIND[step.name])
    return step.with_options(refresh_cache=not done)


@task(name="fingerprint inputs", **IO_RETRIES)
def fingerprint(inputs: dict) -> dict:
    """Content hashes of the checkpoints, the data and the evaluation sets: what every cache
    key is made of."""
    from asft.direction import checkpoint_sha256

    def file_hash(uri: str) -> str:
        return storage.sha256_bytes(storage.read_bytes(uri))

    return {
        "aligned": checkpoint_sha256(storage.materialize(inputs["aligned"])),
        "base": checkpoint_sha256(storage.materialize(inputs["base"])),
        "data": file_hash(inputs["data"]),
        "labels": file_hash(inputs["labels"]) if inputs.get("labels") else None,
        "eval": {"harmful": file_hash(inputs["harmful_eval"]),
                 **{task: file_hash(uri) for task, uri in sorted(inputs["utility_eval"].items())}},
    }


@task(name="resolve inputs")
def resolve_inputs(inputs: dict, sandbox: dict, sandbox_out: str) -> dict:
    """The user's inputs; whatever is left empty comes from the sandbox world (built once)."""
    from asft.sandbox import SandboxConfig, build_sandbox

    if all(inputs[k] for k in ("aligned", "base", "data", "harmful_eval", "utility_eval")):
        return inputs
    world = build_sandbox(SandboxConfig.model_validate(sandbox), sandbox_out)
    data_from_sandbox = not inputs["data"]
    return {
        "aligned": inputs["aligned"] or world["aligned"],
        "base": inputs["base"] or world["base"],
        "data": inputs["data"] or world["finetune"],
        "labels": inputs["labels"] or (world["finetune_labels"] if data_from_sandbox else None),
        "harmful_eval": inputs["harmful_eval"] or world["harmful_eval"],
        "utility_eval": inputs["utility_eval"] or world["utility_eval"],
    }


@task(name="extract direction", **IO_RETRIES, **CACHED)
def extract_direction(key: str, aligned: str, base: str, settings: dict, out: str, hashes: dict) -> dict:
    """``hashes``: the fingerprint step's checkpoint hashes, recorded as given instead of
    hashing both checkpoints a second time."""
    from asft.direction import DirectionConfig
    from asft.direction import extract_direction as extract

    manifest = extract(DirectionConfig(aligned=aligned, base=base, out=out, aligned_sha256=hashes["aligned"],
                                       base_sha256=hashes["base"], **settings))
    return {"uri": out, "direction_sha256": manifest["direction_sha256"], "modules": len(manifest["modules"]),
            "seconds": manifest["seconds"], "rss_growth_mb": manifest["rss_growth_mb"]}


@task(name="screen data", **IO_RETRIES, **CACHED)
def screen_data(key: str, data: str, labels: str | None, settings: dict, out: str) -> dict:
    """Ingest and screen the data; training only ever sees the accepted rows."""
    from asft.data.pipeline import ScreenConfig, run_screen

    report = run_screen(ScreenConfig(data=data, out=out, labels=labels, **settings))
    quality = {k: report["quality"][k] for k in ("precision", "recall", "false_positive_rate")} if "quality" in report else {}
    return {"accepted": report["files"]["accepted"], "report_uri": report["files"]["screening_report"],
            "counts": {**report["counts"], **quality}, "sha256": report["sha256"]}


def run_remotely(deployment: str, config: dict, result_file: str) -> dict:
    """Run a step as its own deployment (a GPU work pool) and read back its manifest."""
    run = run_deployment(deployment, parameters={"config": config}, timeout=None)
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"deployment {deployment} ended {run.state.name if run.state else 'without a state'}; "
                           "see that flow run's logs in the Prefect UI")
    return storage.read_json(storage.join(config["out"], result_file))


@task(name="train adapter")
def train_adapter(config: dict, deployment: str | None) -> dict:
    """Train in-process (with a progress artifact) or as a deployment on a GPU work pool."""
    from asft.training import TrainConfig, train
    from asft.training.trainer import previous_result

    done = previous_result(TrainConfig.model_validate(config))
    if done is not None:  # a retry of this pipeline run: the adapter it trained is complete
        return done
    if deployment:
        return {"adapter": config["out"], **run_remotely(deployment, config, "train_manifest.json")}
    progress_id = create_progress_artifact(0.0, key="training-progress", description="AsFT training progress")
    shown = [0.0]

    def on_step(metrics: dict) -> None:
        done = 100.0 * metrics["step"] / metrics["total_steps"]
        if done - shown[0] >= 2.0 or metrics["step"] == metrics["total_steps"]:
            shown[0] = done
            update_progress_artifact(progress_id, done)

    return train(TrainConfig.model_validate(config), on_step=on_step)


@task(name="evaluate")
def evaluate(config: dict, deployment: str | None) -> dict:
    from asft.evaluation import EvalConfig
    from asft.evaluation import evaluate as run_eval

    if deployment:
        return run_remotely(deployment, config, "report.json")
    return run_eval(EvalConfig.model_validate(config))


@task(name="evaluate aligned model", **CACHED)
def evaluate_baseline(key: str, config: dict, deployment: str | None) -> dict:
    """The aligned model's own scores: the 'before' of the report, cached by content."""
    return evaluate.fn(config, deployment)


@task(name="inspect update")
def inspect_update(direction: str, adapter: str, out: str) -> dict:
    from asft.update_inspection import inspect_update as inspect

    return inspect(direction, adapter=adapter, out=out)


def finish_recorded(model_name: str, recorded: dict, tracking_uri: str, run_dir: str) -> dict:
    """The summary of a pipeline run that already registered its version, after finishing a
    promotion a crash interrupted; nothing is trained, evaluated or re-tagged."""
    moved = registry.complete_promotion(model_name, recorded, tracking_uri=tracking_uri)
    result = recorded["summary"]
    return {"mlflow_run_id": recorded["run_id"], "tracking_uri": tracking_uri, "model_name": model_name,
            "model_version": recorded["version"], "gate": {"passed": recorded["passed"], "reasons": recorded["reasons"]},
            "champion_moved": moved, "harmful_score": result.harmful_score, "utility": result.utility,
            "artifacts": run_dir, "already_registered": True}
