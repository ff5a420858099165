"""The optional human approval before promotion (Prefect suspends the run and shows a form)."""

from __future__ import annotations

from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput

from asft.gates import EvalSummary
from asft.pipeline_config import PipelineConfig


class Approval(RunInput):
    """Shown in the Prefect UI when the run waits for a reviewer."""

    approve: bool = False
    reviewer: str = ""
    note: str = ""


def ask_for_approval(candidate: EvalSummary, config: PipelineConfig) -> str | None:
    """The reviewer's name if they approve, else None (the approval gate then fails).

    The run is suspended (its process exits; a worker resumes it after the answer), so this
    needs the flow to run from a deployment.
    """
    answer = suspend_flow_run(wait_for_input=Approval.with_initial_data(
        description=(f"Approve promotion of a {config.train.method} adapter with harmful score "
                     f"{candidate.harmful_score:.1f} % and utility {candidate.utility}?")),
        timeout=config.execution.approval_timeout_s)
    return answer.reviewer or "reviewer" if answer.approve else None
