"""The AsFT pipeline flow. It reads like the diagram in docs/architecture.md:

    aligned + base ──► direction ──┐
    raw data ──► ingest + screen ──┼──► train ──► evaluate ──► register + gate
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from asft import registry, storage
from asft.gates import decide, eval_summary
from asft.pipeline_config import PipelineConfig
from flows import steps
from flows.approval import ask_for_approval
from flows.reporting import log_run, publish


@flow(name="asft-pipeline", log_prints=True)
def asft_pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """Direction -> screening -> training -> evaluation -> gated MLflow registration."""
    root = config.artifact_root
    run_key = config.run_key or str(flow_run.get_id())
    tracking_uri = config.tracking_uri()
    model_name = config.registry.model_name
    recorded = registry.recorded_outcome(model_name, run_key, tracking_uri=tracking_uri)
    if recorded is not None:  # a complete version is immutable: a retry only finishes its promotion
        return steps.finish_recorded(model_name, recorded, tracking_uri, storage.join(root, "runs", run_key))
    storage.check_writable(root)
    inputs = steps.resolve_inputs(config.inputs.model_dump(), config.sandbox.model_dump(), storage.join(root, "sandbox"))
    mlflow_run = registry.start_or_resume_run(tracking_uri, config.registry.experiment, run_key,
                                              config.model_dump(mode="json"))
    try:
        hashes = steps.fingerprint(inputs)

        key = steps.content_key("direction", hashes["aligned"], hashes["base"], config.direction.model_dump())
        out = storage.join(root, "directions", key)
        direction = steps.cached(steps.extract_direction, out)(
            key, inputs["aligned"], inputs["base"], config.direction.model_dump(), out,
            {"aligned": hashes["aligned"], "base": hashes["base"]})

        key = steps.content_key("screening", hashes["data"], hashes["labels"], config.screening.model_dump(by_alias=True))
        out = storage.join(root, "screening", key)
        screening = steps.cached(steps.screen_data, out)(key, inputs["data"], inputs["labels"],
                                                         config.screening.model_dump(by_alias=True), out)

        run_dir = storage.join(root, "runs", run_key)
        training = steps.train_adapter(
            {**config.train.model_dump(exclude_unset=True), "model": inputs["aligned"], "data": screening["accepted"],
             "direction": direction["uri"], "out": storage.join(run_dir, "adapter"), "resume": True},
            config.execution.train_deployment)

        evaluation = {**config.evaluation.model_dump(exclude_unset=True), "model": inputs["aligned"],
                      "harmful": inputs["harmful_eval"], "utility": inputs["utility_eval"]}
        key = steps.content_key("baseline", hashes["aligned"], hashes["eval"], evaluation)
        out = storage.join(root, "baselines", key)
        before = steps.cached(steps.evaluate_baseline, out)(key, {**evaluation, "out": out},
                                                            config.execution.evaluate_deployment)
        after = steps.evaluate({**evaluation, "adapter": training["adapter"], "out": storage.join(run_dir, "evaluation")},
                               config.execution.evaluate_deployment)
        inspection = (steps.inspect_update(direction["uri"], training["adapter"], storage.join(run_dir, "inspection"))
                      if config.inspect_update else None)
        log_run(mlflow_run, tracking_uri, direction=direction, screening=screening, training=training,
                before=before, after=after, adapter=training["adapter"], evaluation_dir=storage.join(run_dir, "evaluation"),
                inspection=inspection)
        candidate = eval_summary(after)
        approval = None
        if config.execution.manual_approval:
            champion = registry.champion(model_name, tracking_uri=tracking_uri)
            approval = ask_for_approval(candidate, decide(candidate, champion and champion[1], config.gates), config)
    except BaseException:
        registry.finish_run(mlflow_run, "FAILED", tracking_uri=tracking_uri)
        raise
    version, decision, moved = registry.register_and_promote(
        mlflow_run, model_name, "adapter",
        {"method": training["method"], "data_sha256": hashes["data"], "direction_sha256": direction["direction_sha256"]},
        candidate=candidate, gates=config.gates, approval=approval, tracking_uri=tracking_uri)

    summary = {
        "mlflow_run_id": mlflow_run, "tracking_uri": tracking_uri,
        "model_name": model_name, "model_version": version,
        "gate": {"passed": decision.passed, "reasons": decision.reasons}, "champion_moved": moved,
        "method": training["method"], "harmful_score": after["harmful_score"], "utility": after["utility"],
        "before": {"harmful_score": before["harmful_score"], "utility": before["utility"]},
        "screening": screening["counts"], "artifacts": run_dir,
    }
    publish(summary, before, after, screening, decision, inspection)
    get_run_logger().info("gates %s: %s", "PASSED" if decision.passed else "FAILED", "; ".join(decision.reasons))
    return summary
