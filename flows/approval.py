"""The reviewer's approval before promotion (Prefect pauses the run and shows a form).

Asking means requiring: a "no", or no answer before ``execution.approval_timeout_s``,
fails the manual-approval gate.
"""

from __future__ import annotations

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from asft.gates import Approval, EvalSummary, GateDecision
from asft.pipeline_config import PipelineConfig


class ReviewerAnswer(RunInput):
    """Shown in the Prefect UI while the run waits for a reviewer."""

    approve: bool = False
    reviewer: str = ""
    note: str = ""


def ask_for_approval(candidate: EvalSummary, preliminary: GateDecision, config: PipelineConfig) -> Approval:
    """The reviewer's answer; a candidate that already failed the automatic gates is not shown."""
    if not preliminary.passed:
        return Approval(approved=False, note="not asked: the automatic gates failed")
    timeout = config.execution.approval_timeout_s
    reasons = "\n".join(f"- {reason}" for reason in preliminary.reasons)
    description = (f"Approve promotion of a {config.train.method} adapter with harmful score "
                   f"{candidate.harmful_score:.1f} % and utility {candidate.utility}?\n\nGates:\n{reasons}")
    try:
        answer = pause_flow_run(wait_for_input=ReviewerAnswer.with_initial_data(description=description),
                                timeout=timeout)
    except FlowPauseTimeout:
        return Approval(approved=False, note=f"no answer within {timeout} s")
    return Approval(approved=answer.approve, reviewer=answer.reviewer.strip() or "reviewer", note=answer.note)
