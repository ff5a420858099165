"""The AsFT pipeline flow. It reads like the diagram in docs/architecture.md:

    aligned + base ──► direction ──┐
    raw data ──► ingest + screen ──┼──► train ──► evaluate ──► register + gate
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from asft import registry
from asft.gates import eval_summary
from asft.pipeline_config import PipelineConfig, preflight
from flows import steps
from flows.approval import ask_for_approval
from flows.reporting import log_run, publish


@flow(name="asft-pipeline", log_prints=True)
def asft_pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """Direction -> screening -> training -> evaluation -> gated MLflow registration."""
    run = steps.Run.of(config, key=config.run_key or str(flow_run.get_id()))
    recorded = registry.recorded_outcome(run.model_name, run.key, tracking_uri=run.tracking_uri)
    if recorded is not None:  # a complete version is immutable: a retry only finishes its promotion
        return steps.finish_recorded(run, recorded)
    preflight(config)
    inputs, hashes = steps.prepare(config, run)
    selected = steps.select_data(config, run, inputs, hashes)
    if selected is None:  # a nightly run with no new partition
        return steps.nothing_new(config, run, hashes)
    inputs, hashes = selected
    mlflow_run = registry.start_or_resume_run(run.tracking_uri, config.registry.experiment, run.key,
                                              config.model_dump(mode="json"))
    try:
        direction = steps.direction(config, run, inputs, hashes)
        screening = steps.screening(config, run, inputs, hashes)
        training = steps.training(config, run, inputs, direction, screening)
        before, after = steps.evaluations(config, run, inputs, hashes, training)
        inspection = steps.inspection(config, run, direction, training)
        log_run(mlflow_run, run, data=steps.data_record(config, hashes), direction=direction, screening=screening,
                training=training, before=before, after=after, inspection=inspection)
        candidate = eval_summary(after, config.gates.judge)
        approval = ask_for_approval(candidate, after, inspection, config, run) if config.execution.manual_approval else None
    except BaseException:
        registry.finish_run(mlflow_run, "FAILED", tracking_uri=run.tracking_uri)
        raise
    promotion = registry.register_and_promote(mlflow_run, run.model_name, "adapter",
                                              steps.lineage(training, hashes, direction), candidate=candidate,
                                              gates=config.gates, approval=approval, tracking_uri=run.tracking_uri)
    return publish(run, mlflow_run, promotion, candidate, before=before, after=after, screening=screening,
                   training=training, inspection=inspection)
