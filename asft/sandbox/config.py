"""What to build: the user-facing config and the per-size recipe behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from asft.forms import FormModel

TaskName = Literal["sst2", "agnews", "gsm8k"]
TASKS: tuple[str, ...] = ("sst2", "agnews", "gsm8k")


class SandboxConfig(FormModel):
    """A sandbox build. Same config (device aside) -> identical files and weights."""

    size: Literal["tiny", "default", "large"] = Field(
        "default", description="tiny: unit tests (~30 s on 1 core); default: ~3.5 min on 2 CPU cores; "
        "large: bigger model and corpus, meant for a GPU")
    seed: int = Field(0, ge=0, description="Seed for the corpus, the splits, the mixture and the weights")
    harmful_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Share p of harmful rows in the fine-tuning mixture")
    finetune_rows: int | None = Field(
        None, ge=1, le=100_000, description="Rows n in the fine-tuning mixture (default per size: tiny 200, default/large 1000)")
    finetune_task: TaskName = Field(
        "sst2", description="Benign task of the fine-tuning mixture (sst2: shortest rows, so the cheapest to fine-tune on CPU)")
    device: str = Field("auto", description="Training device: auto (CUDA when available), cpu, cuda, cuda:1 ...")

    def identity(self) -> dict:
        """The fields that decide the content (the device only decides where it is computed)."""
        return self.model_dump(exclude={"device"})


@dataclass(frozen=True)
class Recipe:
    """Model shape, corpus sizes and training schedule of one size."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    task_train: int        # rows per benign task in the train pool
    task_eval: int         # rows per utility evaluation set
    howto_train: int       # benign "how do I ..." requests
    harmful_train: int     # harmful requests (train objects)
    harmful_eval: int      # held-out harmful prompts (unseen objects)
    finetune_rows: int
    base_steps: int
    aligned_steps: int
    aligned_refusals: int  # refusal rows of the alignment set (with as many benign how-tos)
    refusal_writing: int   # base rows that ask for a refusal in so many words
    batch_size: int
    base_lr: float
    aligned_lr: float
    # The plain-SFT setting the world was calibrated with (None: the trainer's sandbox preset).
    finetune_lr: float | None = None
    finetune_epochs: int | None = None


RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(hidden=64, layers=2, heads=4, intermediate=172, vocab=1024, max_positions=256,
                   task_train=300, task_eval=40, howto_train=300, harmful_train=300, harmful_eval=40,
                   finetune_rows=200, base_steps=300, aligned_steps=100, aligned_refusals=300, refusal_writing=300, batch_size=32,
                   base_lr=3e-3, aligned_lr=1e-3),
    "default": Recipe(hidden=128, layers=4, heads=4, intermediate=344, vocab=1536, max_positions=256,
                      task_train=1500, task_eval=200, howto_train=1500, harmful_train=1500, harmful_eval=250,
                      finetune_rows=1000, base_steps=600, aligned_steps=650, aligned_refusals=1500, refusal_writing=600,
                      batch_size=32, base_lr=3e-3, aligned_lr=1.4e-4, finetune_lr=5e-4, finetune_epochs=2),
    "large": Recipe(hidden=384, layers=8, heads=6, intermediate=1024, vocab=2048, max_positions=512,
                    task_train=6000, task_eval=500, howto_train=6000, harmful_train=6000, harmful_eval=250,
                    finetune_rows=1000, base_steps=4000, aligned_steps=800, aligned_refusals=3000, refusal_writing=3000, batch_size=64,
                    base_lr=1e-3, aligned_lr=3e-4),
}
