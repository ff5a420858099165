"""``asft inspect``: how much of an update lies along the alignment direction."""

from __future__ import annotations

import typer

from asft.cli.app import JSON_OPTION, app, emit


@app.command("inspect")
def inspect_command(
    direction: str = typer.Option(..., "--direction", help="Direction folder from `asft direction`"),
    out: str = typer.Option(..., "--out", help="Folder or URI for inspection.{json,csv,md,png}"),
    adapter: str = typer.Option(None, "--adapter", help="PEFT LoRA adapter folder (read raw, no model loaded)"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Full fine-tuned checkpoint (dW = W_ft - W_aligned)"),
    aligned: str = typer.Option(None, "--aligned", help="Aligned checkpoint for --checkpoint (default: the direction's)"),
    top_k: int = typer.Option(8, "--top-k", help="Rank k of the true projector on V's top-k left singular vectors"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Per module: the update's share along V vs orthogonal to it, its cosine with V and the AsFT penalty."""
    from asft.cli.app import validated
    from asft.update_inspection import InspectConfig, inspect_update

    config = validated(InspectConfig, top_k=top_k)
    emit(inspect_update(direction, adapter=adapter, checkpoint=checkpoint, aligned=aligned, out=out, config=config), as_json)
