"""``asft train``: LoRA fine-tuning with SFT, AsFT or Safe LoRA."""

from __future__ import annotations

import typer

from asft.cli.app import JSON_OPTION, app, emit
from asft.cli.direction import validated


@app.command("train")
def train(
    model: str = typer.Option(..., "--model", help="Aligned checkpoint folder or URI to fine-tune"),
    out: str = typer.Option(..., "--out", help="Output folder or URI for the adapter and train_manifest.json"),
    data: str = typer.Option(None, "--data", help="JSON/JSONL rows with instruction, input, output"),
    method: str = typer.Option("asft", "--method", help="sft | asft | safelora"),
    direction: str = typer.Option(None, "--direction", help="Folder from `asft direction` (asft, safelora; logged with sft)"),
    adapter: str = typer.Option(None, "--adapter", help="safelora: project this existing adapter instead of training"),
    preset: str = typer.Option("paper", "--preset", help="paper | sandbox: defaults for unset hyper-parameters"),
    lam: float = typer.Option(None, "--lam", help="Penalty weight (default 1)"),
    anchor: str = typer.Option(None, "--anchor", help="fro (paper) | projector (top-k singular vectors)"),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (preset default)"),
    lr: float = typer.Option(None, "--lr", help="Learning rate (preset default)"),
    batch_size: int = typer.Option(None, "--batch-size", help="Examples per step (preset default)"),
    max_length: int = typer.Option(None, "--max-length", help="Tokens per example (preset default)"),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many steps"),
    target_modules: str = typer.Option(None, "--target-modules", help="Comma-separated LoRA targets (default q_proj,v_proj)"),
    seed: int = typer.Option(None, "--seed", help="Seed (default 42)"),
    template: str = typer.Option(None, "--template", help="alpaca | llama2-chat | chat"),
    precision: str = typer.Option(None, "--precision", help="auto | fp32 | bf16 | fp16"),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda"),
    safelora_mode: str = typer.Option(None, "--safelora-mode", help="threshold | number"),
    safelora_tau: float = typer.Option(None, "--safelora-tau", help="Cosine threshold (default 0.5)"),
    safelora_k: int = typer.Option(None, "--safelora-k", help="Modules projected in number mode (default 10)"),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", help="Save a resumable checkpoint every N steps"),
    checkpoint_dir: str = typer.Option(None, "--checkpoint-dir", help="Checkpoint location (default <out>.checkpoints)"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with the checkpoint"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune with LoRA (sft), LoRA + alignment-anchored penalty (asft), or Safe LoRA's projection."""
    from asft.training import TrainConfig
    from asft.training import train as run_training

    targets = [t.strip() for t in target_modules.split(",") if t.strip()] if target_modules is not None else None
    given = dict(
        model=model, out=out, data=data, method=method, direction=direction, adapter=adapter,
        preset=preset, lam=lam, anchor=anchor, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
        max_steps=max_steps, target_modules=targets, seed=seed, template=template, precision=precision,
        device=device, safelora_mode=safelora_mode, safelora_tau=safelora_tau, safelora_k=safelora_k,
        checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir, resume=resume,
        trust_remote_code=trust_remote_code)
    config = validated(TrainConfig, **{k: v for k, v in given.items() if v is not None})  # unset: preset/default
    emit(run_training(config), as_json)
