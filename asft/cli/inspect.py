"""``asft inspect``: how much of an update lies along the alignment direction."""

from __future__ import annotations

import typer

from asft.cli import config_args
from asft.cli.app import JSON_OPTION, app, emit



@config_args.command(app, "inspect", config_args.Spec("asft.update_inspection:InspectConfig"))
def inspect_command(
    ctx: typer.Context,
    direction: str = typer.Option(..., "--direction", help="Direction folder from `asft direction`"),
    out: str = typer.Option(..., "--out", help="Folder or URI for inspection.{json,csv,md,png}"),
    adapter: str = typer.Option(None, "--adapter", help="PEFT LoRA adapter folder (read raw, no model loaded)"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Full fine-tuned checkpoint (dW = W_ft - W_aligned)"),
    aligned: str = typer.Option(None, "--aligned", help="Aligned checkpoint for --checkpoint (default: the direction's)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Per module: the update's share along V vs orthogonal to it, its cosine with V and the AsFT penalty."""
    from asft.update_inspection import inspect_update

    emit(inspect_update(direction, adapter=adapter, checkpoint=checkpoint, aligned=aligned, out=out,
                        config=config_args.build(ctx)), as_json)
