"""The ``asft`` console command: the library's commands plus ``asft pipeline``, the Prefect flow.

The library (``asft/``) never imports prefect or ``flows``; this app layer adds the one command
that does, on an app built from the library's. Prefect itself is imported only when the
pipeline runs, after the config has been validated and preflighted.
"""

from __future__ import annotations

import logging
import os

import typer

from asft.cli import app as library_app
from asft.cli import config_args, run
from asft.cli.app import JSON_OPTION, emit, progress
from asft.errors import AsftError

app = typer.Typer(rich_markup_mode=None, help=library_app.info.help, no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
app.add_typer(library_app)  # nameless: its commands join this app
stack_app = typer.Typer(help="The team stack without Docker: PostgreSQL, S3 (moto), MLflow and Prefect servers, "
                        "work pools, deployments and process workers on 127.0.0.1.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
STACK = config_args.Spec("flows.stack:StackConfig")

@config_args.command(app, "pipeline", config_args.Spec("asft.pipeline_config:PipelineConfig", essentials=("artifact_root",)))
def pipeline(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Direction -> screening -> training -> evaluation -> gated MLflow registration (default: the embedded sandbox run)."""
    from asft.pipeline_config import preflight

    settings = config_args.build(ctx)
    preflight(settings)  # before Prefect's server starts
    # Embedded default: Prefect's temporary server starts slowly on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import asft_pipeline

    _drop_user_error_tracebacks()
    try:
        summary = asft_pipeline(config=settings)
    except BaseException:
        _stop_prefect_before_the_error_line()
        raise
    progress(f"\nMLflow UI:  mlflow ui --backend-store-uri {summary['tracking_uri']}")
    progress(f"artefacts:  {summary['artifacts']}")
    if summary.get("nothing_new"):
        progress(f"nothing new, nothing trained: champion stays {summary['model_name']} v{summary['model_version']}")
    else:
        progress(f"gates {'PASSED' if summary['gate']['passed'] else 'FAILED'}: " + "; ".join(summary["gate"]["reasons"]))
        progress(f"champion moved: {summary['champion_moved']} ({summary['model_name']} v{summary['model_version']})")
    emit(summary, as_json)


@config_args.command(stack_app, "up", STACK)
def stack_up(ctx: typer.Context) -> None:
    """Start the stack (or keep what already runs); then `eval "$(asft stack env)"` points a shell at it."""
    from flows import stack

    stack.up(config_args.build(ctx), progress=progress)


@config_args.command(stack_app, "down", STACK)
def stack_down(ctx: typer.Context) -> None:
    """Stop every process the stack started (its databases stay under --root)."""
    from flows import stack

    stopped = stack.down(config_args.build(ctx))
    progress(f"stack: stopped {', '.join(stopped) if stopped else 'nothing (nothing was running)'}")


@config_args.command(stack_app, "env", STACK)
def stack_env(ctx: typer.Context) -> None:
    """Print the stack's variables as shell exports (the names docker/.env uses for compose)."""
    from flows import stack

    print(stack.shell_exports(stack.environment(config_args.build(ctx))), end="")


class _WithoutUserErrorTracebacks(logging.Filter):
    """Prefect logs a failed run's traceback; for a user error the message alone says it all
    (and the command ends with it as its one ``asft: error:`` line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], AsftError):
            record.exc_info, record.exc_text = None, None
        return True


def _stop_prefect_before_the_error_line() -> None:
    """Prefect stops its temporary server at exit, after the command's error line, and a request
    the server is still answering then ends in a traceback on stderr (seen once in CI). Send the
    last logs and events and stop the server first, so the error line stays the last line."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=5)
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()


def _drop_user_error_tracebacks() -> None:
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_WithoutUserErrorTracebacks())


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
