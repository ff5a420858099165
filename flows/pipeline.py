"""The AsFT pipeline flow. It reads like the diagram in docs/architecture.md:

    aligned + base ──► direction ──┐
    raw data ──► ingest + screen ──┼──► train ──► evaluate ──► register + gate
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from asft import registry, storage
from asft.gates import decide
from asft.pipeline_config import PipelineConfig
from flows import steps
from flows.approval import ask_for_approval
from flows.reporting import eval_summary, log_run, publish


@flow(name="asft-pipeline", log_prints=True)
def asft_pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """Direction -> screening -> training -> evaluation -> gated MLflow registration."""
    log = get_run_logger()
    root = config.artifact_root
    run_key = config.run_key or str(flow_run.get_id())
    tracking_uri = config.tracking_uri()
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

        key = steps.content_key("screening", hashes["data"], inputs["labels"], config.screening.model_dump(by_alias=True))
        out = storage.join(root, "screening", key)
        screening = steps.cached(steps.screen_data, out)(key, inputs["data"], inputs["labels"],
                                                         config.screening.model_dump(by_alias=True), out)

        run_dir = storage.join(root, "runs", run_key)
        training = steps.train_adapter(
            {**config.train.model_dump(exclude_unset=True), "model": inputs["aligned"], "data": screening["accepted"],
             "direction": direction["uri"], "out": storage.join(run_dir, "adapter")},
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
        champion = registry.champion(config.registry.model_name, tracking_uri=tracking_uri)
        approver = ask_for_approval(candidate, config) if config.execution.manual_approval else None
        decision = decide(candidate, champion[1] if champion else None, config.gates, approved_by=approver)
        version = registry.register_candidate(
            mlflow_run, config.registry.model_name, "adapter",
            {"method": training["method"], "data_sha256": hashes["data"], "direction_sha256": direction["direction_sha256"]},
            summary=candidate, decision=decision, tracking_uri=tracking_uri)
        moved = registry.promote(config.registry.model_name, version, decision, tracking_uri=tracking_uri) \
            if decision.passed else False
    except BaseException:
        registry.finish_run(mlflow_run, "FAILED", tracking_uri=tracking_uri)
        raise
    registry.finish_run(mlflow_run, tracking_uri=tracking_uri)

    summary = {
        "mlflow_run_id": mlflow_run, "tracking_uri": tracking_uri,
        "model_name": config.registry.model_name, "model_version": version,
        "gate": {"passed": decision.passed, "reasons": decision.reasons}, "champion_moved": moved,
        "method": training["method"], "harmful_score": after["harmful_score"], "utility": after["utility"],
        "before": {"harmful_score": before["harmful_score"], "utility": before["utility"]},
        "screening": screening["counts"], "artifacts": run_dir,
    }
    publish(summary, before, after, screening, decision, inspection)
    log.info("gates %s: %s", "PASSED" if decision.passed else "FAILED", "; ".join(decision.reasons))
    return summary
