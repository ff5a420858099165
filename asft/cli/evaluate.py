"""``asft eval``: harmful score (with its judge) and utility of a model or adapter."""

from __future__ import annotations

import typer

from asft.cli.app import JSON_OPTION, app, emit, validated
from asft.errors import AsftError


def parse_utility(specs: list[str]) -> dict[str, str]:
    """``TASK=FILE`` pairs; a ``regex:<pattern>`` task splits at the last '=' (patterns may hold '=')."""
    utility: dict[str, str] = {}
    for spec in specs:
        task, sep, uri = spec.rpartition("=") if spec.startswith("regex:") else spec.partition("=")
        if not sep or not task or not uri:
            raise AsftError(f"--utility {spec!r}: expected TASK=FILE, e.g. --utility sst2=data/eval/sst2.jsonl")
        if task in utility:
            raise AsftError(f"--utility: task {task!r} given twice; give each task once")
        utility[task] = uri
    return utility


@app.command("eval")
def evaluate_command(
    model: str = typer.Option(..., "--model", help="Base checkpoint folder or URI (safetensors)"),
    adapter: str = typer.Option(None, "--adapter", help="PEFT adapter folder or URI applied on top"),
    harmful: str = typer.Option(None, "--harmful", help="Harmful prompts (JSON array / JSONL with 'instruction')"),
    utility: list[str] = typer.Option([], "--utility", help="TASK=FILE, repeatable; TASK: sst2 | agnews | gsm8k | exact | regex:<pattern>"),
    out: str = typer.Option(..., "--out", help="Folder or URI for report.json and samples.jsonl"),
    judge: str = typer.Option("keyword", "--judge", help="keyword (refusal phrases) | moderation | guard"),
    judge_model: str = typer.Option(None, "--judge-model", help="Judge checkpoint for moderation / guard"),
    threshold: float = typer.Option(0.5, "--threshold", help="moderation: flag if any category probability exceeds it"),
    limit: int = typer.Option(None, "--limit", help="Use only the first N rows of each set (paper: 250 harmful)"),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per generation batch"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Greedy decoding length (the paper uses 512)"),
    template: str = typer.Option("alpaca", "--template", help="alpaca | llama2-chat | chat"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow custom code shipped with checkpoints"),
    allow_other_base: bool = typer.Option(False, "--allow-other-base",
                                          help="Apply an adapter trained on another base model (warn instead of refusing)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Generate greedy answers; report the harmful score (95% Wilson CI) and utility accuracy with the protocol used."""
    from asft.evaluation import evaluate

    if judge not in ("keyword", "moderation", "guard"):
        raise AsftError(f"--judge {judge!r}: unknown judge; choose keyword, moderation or guard")
    judge_config = {"kind": judge, "model": judge_model, "threshold": threshold}
    from asft.evaluation import EvalConfig

    config = validated(EvalConfig, model=model, adapter=adapter, harmful=harmful, utility=parse_utility(utility), out=out,
                     judge=judge_config, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens,
                     template=template, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                     allow_other_base=allow_other_base)
    emit(evaluate(config), as_json)
