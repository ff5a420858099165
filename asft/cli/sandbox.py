"""``asft sandbox``: build the offline safety world (tiny base/aligned Llama pair and data)."""

from __future__ import annotations

import typer

from asft.cli.app import JSON_OPTION, app, emit, validated

sandbox_app = typer.Typer(help="The sandbox safety world: tiny base/aligned models and fine-tuning data, built offline.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("build")
def build(
    out: str = typer.Option(..., "--out", help="Folder or URI (s3://...) to build into"),
    size: str = typer.Option("default", "--size", help="tiny | default | large"),
    seed: int = typer.Option(0, "--seed", help="Seed for corpus, splits, mixture and weights"),
    harmful_ratio: float = typer.Option(0.1, "--harmful-ratio", help="Share p of harmful rows in the fine-tuning mixture, in [0, 1]"),
    finetune_rows: int = typer.Option(None, "--finetune-rows", help="Rows in the mixture (default per size)"),
    finetune_task: str = typer.Option("sst2", "--finetune-task", help="sst2 | agnews | gsm8k"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    force: bool = typer.Option(False, "--force", help="Rebuild even if OUT holds a sandbox of the same config"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Build (or reuse) a sandbox: base and aligned models, a fine-tuning mixture with labels, evaluation sets."""
    from asft.sandbox import SandboxConfig, build_sandbox

    config = validated(SandboxConfig, size=size, seed=seed, harmful_ratio=harmful_ratio, finetune_rows=finetune_rows,
                     finetune_task=finetune_task, device=device)
    emit(build_sandbox(config, out, force=force), as_json)


@sandbox_app.command("mixture")
def mixture(
    sandbox: str = typer.Option(..., "--sandbox", help="A built sandbox folder or URI"),
    harmful_ratio: float = typer.Option(..., "--harmful-ratio", help="Share p of harmful rows, in [0, 1]"),
    rows: int = typer.Option(None, "--rows", help="Rows in the mixture (default: as built)"),
    task: str = typer.Option(None, "--task", help="sst2 | agnews | gsm8k (default: as built)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write another fine-tuning mixture (other p, n or task) into a built sandbox, without retraining."""
    from asft.sandbox import write_mixture

    emit(write_mixture(sandbox, harmful_ratio, rows=rows, task=task), as_json)
