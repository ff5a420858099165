"""``asft landscape``: the safety basin around an aligned model, along V and across it (a random
direction, and the update of a fine-tuning adapter)."""

from __future__ import annotations

import math

import typer

from asft.cli import config_args
from asft.cli.app import JSON_OPTION, app, emit, progress
from asft.cli.evaluate import UTILITY_HELP, parse_utility
from asft.errors import AsftError


def parse_range(text: str, option: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise AsftError(f"{option} {text!r}: expected LOW,HIGH such as -1,1") from None
    if not math.isfinite(low) or not math.isfinite(high):
        raise AsftError(f"{option} {text}: both ends must be finite numbers, e.g. -1,1")
    if not low < high:
        raise AsftError(f"{option} {text}: the low end must be below the high end, e.g. -1,1")
    return low, high



@config_args.command(app, "landscape", config_args.Spec("asft.landscape:LandscapeConfig", aliases={"judge.kind": ["--judge"]}))
def landscape_command(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Aligned checkpoint folder or URI (safetensors)"),
    harmful: str = typer.Option(..., "--harmful", help="Harmful prompts (JSON array / JSONL with 'instruction')"),
    out: str = typer.Option(..., "--out", help="Folder or URI for grid.csv, plots and summary.json"),
    direction: str = typer.Option(None, "--direction", help="Direction folder from `asft direction` (d_aligned = V)"),
    base: str = typer.Option(None, "--base", help="Base checkpoint; needed with --modules all"),
    finetuned: str = typer.Option(None, "--finetuned", help="Adapter folder or full checkpoint to mark at its projected coordinates"),
    adapter: str = typer.Option(None, "--adapter", help="PEFT adapter trained on the model (e.g. SFT on harmful data): its "
                                "update, orthogonal to V and rescaled to ||V|| per module, is the axis s"),
    utility: list[str] = typer.Option([], "--utility", help=UTILITY_HELP + ": utility accuracy at each point"),
    range_a: str = typer.Option(None, "--range", help="LOW,HIGH of a (along V) in units of ||V||; also of b unless --range-b"),
    range_b: str = typer.Option(None, "--range-b", help="LOW,HIGH of b and s (across V) in units of ||V||"),
    run_id: str = typer.Option(None, "--run-id", help="MLflow run to log the plots and widths to"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Sweep W_aligned + a V + b d_perp (+ s d_sft with --adapter); report the basin width along each axis."""
    from asft.landscape import landscape

    extra = {}
    if range_a:
        extra["range_a"] = extra["range_b"] = ("--range", parse_range(range_a, "--range"))
    if range_b:
        extra["range_b"] = ("--range-b", parse_range(range_b, "--range-b"))
    summary = landscape(model, harmful, out, direction=direction, base=base, finetuned=finetuned,
                        adapter=adapter, utility=parse_utility(utility), config=config_args.build(ctx, extra), run_id=run_id,
                        progress=progress)
    emit({key: value for key, value in summary.items() if key not in ("config", "protocol")}, as_json)
