"""``asft train``: LoRA fine-tuning (SFT, AsFT, Safe LoRA, SafeInstr, Lisa); every TrainConfig field is an option."""

from __future__ import annotations

import typer

from asft.cli import config_args
from asft.cli.app import JSON_OPTION, app, emit


@config_args.command(app, "train", config_args.Spec(
    "asft.training:TrainConfig", essentials=("model", "data", "out", "method", "direction", "adapter", "safety_data",
                                             "alignment_data", "preset", "trust_remote_code")))
def train(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Fine-tune with LoRA (sft), LoRA + alignment-anchored penalty (asft), Safe LoRA's projection, refusal rows
    mixed in (safeinstr) or alternating alignment and user phases (lisa)."""
    from asft.training import train as run_training
    from asft.training.distributed import launched_rank

    summary = run_training(config_args.build(ctx))
    if launched_rank() == 0:  # under torchrun / accelerate the ranks return the same summary: print it once
        emit(summary, as_json)
