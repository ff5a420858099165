"""``asft landscape``: the safety basin around an aligned model, along V and across it."""

from __future__ import annotations

import math

import typer

from asft.cli.app import JSON_OPTION, app, emit, progress
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


@app.command("landscape")
def landscape_command(
    model: str = typer.Option(..., "--model", help="Aligned checkpoint folder or URI (safetensors)"),
    harmful: str = typer.Option(..., "--harmful", help="Harmful prompts (JSON array / JSONL with 'instruction')"),
    out: str = typer.Option(..., "--out", help="Folder or URI for grid.csv, plots and summary.json"),
    direction: str = typer.Option(None, "--direction", help="Direction folder from `asft direction` (d_aligned = V)"),
    base: str = typer.Option(None, "--base", help="Base checkpoint; needed with --modules all"),
    modules: str = typer.Option("direction", "--modules", help="direction: the direction's modules | all: every 2-D weight (needs --base)"),
    mode: str = typer.Option("1d", "--mode", help="1d: a slice along each axis | 2d: the full grid"),
    points: int = typer.Option(9, "--points", help="Grid points per axis (0 is always added)"),
    range_a: str = typer.Option("-1,1", "--range", help="LOW,HIGH of a (along V) in units of ||V||; also of b unless --range-b"),
    range_b: str = typer.Option(None, "--range-b", help="LOW,HIGH of b (orthogonal) in units of ||V||"),
    threshold: float = typer.Option(20.0, "--threshold", help="Harmful score (%) at or below which a point is in the basin"),
    finetuned: str = typer.Option(None, "--finetuned", help="Adapter folder or full checkpoint to mark at its projected (a, b)"),
    utility: list[str] = typer.Option([], "--utility", help="TASK=FILE, repeatable: utility accuracy at each point"),
    limit: int = typer.Option(32, "--limit", help="Harmful prompts per point (the first N)"),
    utility_limit: int = typer.Option(32, "--utility-limit", help="Utility rows per task per point"),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="Answer length (a refusal shows early)"),
    batch_size: int = typer.Option(32, "--batch-size", help="Generation batch size"),
    judge: str = typer.Option("keyword", "--judge", help="keyword (refusal phrases) | moderation | guard"),
    judge_model: str = typer.Option(None, "--judge-model", help="Judge checkpoint for moderation / guard"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random orthogonal direction"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16"),
    run_id: str = typer.Option(None, "--run-id", help="MLflow run to log the plots and widths to"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Sweep W_aligned + a V + b d_perp; report the basin width along V and across it."""
    from asft.cli.app import validated
    from asft.cli.evaluate import parse_utility
    from asft.landscape import LandscapeConfig, landscape

    range_a_values = parse_range(range_a, "--range")
    config = validated(
        LandscapeConfig, mode=mode, points=points, range_a=range_a_values,
        range_b=parse_range(range_b, "--range-b") if range_b else range_a_values, threshold=threshold,
        limit=limit, utility_limit=utility_limit, max_new_tokens=max_new_tokens, batch_size=batch_size,
        judge={"kind": judge, "model": judge_model}, modules=modules, seed=seed, device=device, dtype=dtype)
    summary = landscape(model, harmful, out, direction=direction, base=base, finetuned=finetuned,
                        utility=parse_utility(utility), config=config, run_id=run_id, progress=progress)
    emit({key: value for key, value in summary.items() if key not in ("config", "protocol")}, as_json)
