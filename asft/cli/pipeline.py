"""``asft pipeline``: the whole Prefect flow, by default on the embedded sandbox.

This command is the one place where the library's CLI starts Prefect: it imports the flow
lazily, so the rest of ``asft`` never needs prefect.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from asft.cli.app import JSON_OPTION, app, emit, progress
from asft.errors import AsftError


@app.command()
def pipeline(
    config: Path = typer.Option(None, "--config", help="YAML/JSON pipeline config (default: the embedded sandbox run)."),
    artifact_root: str = typer.Option(None, "--artifact-root", help="Folder or s3:// URI for artefacts (overrides the config)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Direction -> screening -> training -> evaluation -> gated MLflow registration."""
    from asft.pipeline_config import load_pipeline_config, preflight

    settings = load_pipeline_config(str(config) if config else None)
    if artifact_root:
        settings = settings.model_copy(update={"artifact_root": artifact_root})
    preflight(settings)  # before Prefect's server starts
    # Embedded default: Prefect's temporary server starts slowly on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import asft_pipeline

    _drop_user_error_tracebacks()
    summary = asft_pipeline(config=settings)
    progress(f"\nMLflow UI:  mlflow ui --backend-store-uri {summary['tracking_uri']}")
    progress(f"artefacts:  {summary['artifacts']}")
    progress(f"gates {'PASSED' if summary['gate']['passed'] else 'FAILED'}: " + "; ".join(summary["gate"]["reasons"]))
    progress(f"champion moved: {summary['champion_moved']} ({summary['model_name']} v{summary['model_version']})")
    emit(summary, as_json)


class _WithoutUserErrorTracebacks(logging.Filter):
    """Prefect logs a failed run's traceback; for a user error the message alone says it all
    (and the command ends with it as its one ``asft: error:`` line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], AsftError):
            record.exc_info, record.exc_text = None, None
        return True


def _drop_user_error_tracebacks() -> None:
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_WithoutUserErrorTracebacks())

