"""The training methods: what each adds to the LoRA recipe.

A method says how the step's objective is formed from the loss and the anchor penalty, and
what happens to the saved adapter. SFT is the plain recipe; AsFT adds ``lam * penalty``;
Safe LoRA is SFT followed by a projection of the saved adapter. A new method is a subclass
registered in ``METHODS`` (and a name in ``TrainConfig.method``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from asft.training.adapter import ADAPTER_FILE, project_adapter_file
from asft.training.config import TrainConfig


class Method:
    """Plain supervised LoRA fine-tuning; with a direction the penalty is logged, not used."""

    name = "sft"
    penalty_has_grad = False  # whether the anchor penalty is part of the objective

    def __init__(self, config: TrainConfig):
        self.config = config

    def objective(self, loss: torch.Tensor, penalty: torch.Tensor | None) -> torch.Tensor:
        return loss

    def divergence_hint(self) -> str:
        """The settings to lower when training diverges."""
        return f"lower --lr (now {self.config.lr:g})"

    def after_save(self, folder: Path) -> dict:
        """Post-process the adapter folder being written; returns additions to its manifest."""
        return {}


class AsFT(Method):
    """LoRA + lam * sum of anchor penalties (the part of each update orthogonal to V)."""

    name = "asft"
    penalty_has_grad = True

    def objective(self, loss: torch.Tensor, penalty: torch.Tensor | None) -> torch.Tensor:
        return loss + self.config.lam * penalty

    def divergence_hint(self) -> str:
        return super().divergence_hint() + f" or --lam (now {self.config.lam:g})"


class SafeLoRA(Method):
    """SFT, then Safe LoRA's post-hoc projection of the saved adapter onto the alignment direction."""

    name = "safelora"

    def after_save(self, folder: Path) -> dict:
        report = project_adapter_file(folder / ADAPTER_FILE, self.config)
        report.pop("direction_sha256")
        return {"safelora": report}


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Method, AsFT, SafeLoRA)}


def method_for(config: TrainConfig) -> Method:
    return METHODS[config.method](config)
