"""``asft eval``: harmful score (with its judge) and utility of a model or adapter."""

from __future__ import annotations

import typer

from asft.cli import config_args
from asft.cli.app import JSON_OPTION, app, emit
from asft.errors import AsftError

UTILITY_HELP = "TASK=FILE, repeatable; TASK: sst2 | agnews | gsm8k | exact | regex:<pattern>"


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



@config_args.command(app, "eval", config_args.Spec(
    "asft.evaluation:EvalConfig", aliases={"judge.kind": ["--judge"], "judge.threshold": ["--threshold"]},
    essentials=("model", "adapter", "harmful", "out", "judge.kind", "judge.model", "trust_remote_code")))
def evaluate_command(
    ctx: typer.Context,
    utility: list[str] = typer.Option([], "--utility", help=UTILITY_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Generate greedy answers; report the harmful score (95% Wilson CI) and utility accuracy with the protocol used."""
    from asft.evaluation import evaluate

    extra = {"utility": ("--utility", parse_utility(utility))} if utility else {}
    emit(evaluate(config_args.build(ctx, extra)), as_json)


@config_args.command(app, "eval-merge", config_args.Spec(
    "asft.evaluation:EvalConfig", aliases={"judge.kind": ["--judge"], "judge.threshold": ["--threshold"]},
    essentials=("model", "adapter", "harmful", "out", "judge.kind", "judge.model", "trust_remote_code")))
def merge_command(
    ctx: typer.Context,
    shard_outs: list[str] = typer.Option(..., "--from", help="a shard's output folder, in order 0/N ... N-1/N; repeat"),
    utility: list[str] = typer.Option([], "--utility", help=UTILITY_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Merge the outputs of shards 0/N ... N-1/N of one evaluation (`asft eval --shard I/N`) into its whole report."""
    from asft.evaluation.shards import merge_shards

    extra = {"utility": ("--utility", parse_utility(utility))} if utility else {}
    emit(merge_shards(config_args.build(ctx, extra), shard_outs), as_json)
