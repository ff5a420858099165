"""``asft sandbox``: build the offline safety world (tiny base/aligned Llama pair and data)."""

from __future__ import annotations

from typing import Literal

import typer
from pydantic import BaseModel, ConfigDict, Field

from asft.cli import config_args
from asft.cli.app import JSON_OPTION, app, emit

sandbox_app = typer.Typer(rich_markup_mode=None, help="The sandbox safety world: tiny base/aligned models and fine-tuning data, built offline.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


class MixtureArgs(BaseModel):
    """Another fine-tuning mixture of a built sandbox (``write_mixture``'s arguments)."""

    model_config = ConfigDict(extra="forbid")

    sandbox: str = Field(description="A built sandbox folder or URI")
    harmful_ratio: float = Field(description="Share p of harmful rows, in [0, 1]")
    rows: int | None = Field(None, description="Rows in the mixture (default: as built)")
    task: Literal["sst2", "agnews", "gsm8k"] | None = Field(None, description="Benign task (default: as built)")



@config_args.command(sandbox_app, "build", config_args.Spec("asft.sandbox:SandboxConfig"))
def build(
    ctx: typer.Context,
    out: str = typer.Option(..., "--out", help="Folder or URI (s3://...) to build into"),
    force: bool = typer.Option(False, "--force", help="Rebuild even if OUT holds a sandbox of the same config"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Build (or reuse) a sandbox: base and aligned models, a fine-tuning mixture with labels, evaluation sets."""
    from asft.sandbox import build_sandbox

    emit(build_sandbox(config_args.build(ctx), out, force=force), as_json)


@config_args.command(sandbox_app, "mixture", config_args.Spec(lambda: MixtureArgs, essentials=("sandbox", "harmful_ratio")))
def mixture(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Write another fine-tuning mixture (other p, n or task) into a built sandbox, without retraining."""
    from asft.sandbox import write_mixture

    args = config_args.build(ctx)
    emit(write_mixture(args.sandbox, args.harmful_ratio, rows=args.rows, task=args.task), as_json)
