"""The reviewer's approval before promotion (Prefect pauses the run and shows a form).

Asking means requiring: a "no", or no answer before ``execution.approval_timeout_s``,
fails the manual-approval gate. The reviewer reads the same decision page the run
publishes afterwards (``asft-gate-decision``), against the champion of that moment.
"""

from __future__ import annotations

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from asft import registry
from asft.gates import Approval, EvalSummary, decide
from asft.pipeline_config import PipelineConfig
from flows.reporting import explain_decision


class ReviewerAnswer(RunInput):
    """Shown in the Prefect UI while the run waits for a reviewer."""

    approve: bool = False
    reviewer: str = ""
    note: str = ""


def ask_for_approval(candidate: EvalSummary, after: dict, inspection: dict | None, config: PipelineConfig,
                     run) -> Approval:
    """The reviewer's answer; a candidate that already failed the automatic gates is not shown."""
    current = registry.champion(run.model_name, tracking_uri=run.tracking_uri)
    preliminary = decide(candidate, current and current[1], config.gates)
    if not preliminary.passed:
        return Approval(approved=False, note="not asked: the automatic gates failed")
    page = explain_decision(run, preliminary, candidate, current, after, inspection, key="asft-gate-decision-pending")
    timeout = config.execution.approval_timeout_s
    description = f"Approve promotion of this {config.train.method} adapter? (no answer in {timeout} s = no)\n\n{page}"
    try:
        answer = pause_flow_run(wait_for_input=ReviewerAnswer.with_initial_data(description=description),
                                timeout=timeout)
    except FlowPauseTimeout:
        return Approval(approved=False, note=f"no answer within {timeout} s")
    return Approval(approved=answer.approve, reviewer=answer.reviewer.strip() or "reviewer", note=answer.note)
