"""The training methods: what each adds to the LoRA recipe.

A method says which rows the loop trains on and in what order (``training_rows``), how the
step's objective is formed from the loss and the anchor penalty, what it does after a step
(``hooks``), what it records, and what happens to the saved adapter. SFT is the plain recipe;
AsFT adds ``lam * penalty``; Safe LoRA is SFT followed by a projection of the saved adapter;
SafeInstr is SFT on the user's rows with a seeded sample of refusal rows mixed in; Lisa
alternates alignment and user phases with a proximal term to the last switch point. A new
method is a subclass registered in ``METHODS`` (and a name in ``TrainConfig.method``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from asft.errors import AsftError
from asft.training.adapter import ADAPTER_FILE, project_adapter_file
from asft.training.config import TrainConfig
from asft.training.distributed import gathered, whole
from asft.training.loop import EpochShuffle, Hook, Schedule, StepResult

Rows = list[dict[str, list[int]]]
Reader = Callable[[str], tuple[Rows, str]]  # a source -> its rows, encoded like the user's, and its content hash


class Method:
    """Plain supervised LoRA fine-tuning; with a direction the penalty is logged, not used."""

    name = "sft"
    penalty_has_grad = False  # whether the anchor penalty is part of the objective

    def __init__(self, config: TrainConfig):
        self.config = config

    def training_rows(self, user: Rows, read: Reader) -> tuple[Rows, Schedule]:
        """The rows the loop indexes and the sampler that orders them: the user's, reshuffled every epoch."""
        return user, EpochShuffle(len(user), self.config.batch_size, self.config.seed)

    def start(self, trainable: dict[str, torch.Tensor]) -> None:
        """Called at the end of the recipe's setup with the trainable weights at their starting values."""

    def objective(self, loss: torch.Tensor, penalty: torch.Tensor | None) -> torch.Tensor:
        return loss

    def hooks(self) -> list[Hook]:
        """What the method does after each optimizer step (on every rank)."""
        return []

    def step_record(self, step: int) -> dict:
        """Additions to the metrics row of step ``step`` (from 0)."""
        return {}

    def record(self, steps: int) -> dict:
        """Additions to the training manifest after ``steps`` steps: what the method read and did."""
        return {}

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


class SafeInstr(Method):
    """SFT on the user's rows plus k refusal rows of ``safety_data`` (k = round(s / (1 - s) * n_user),
    so that they are the share s of the final set), drawn without replacement with the run's seed and
    shuffled into the epochs with the user's rows."""

    name = "safeinstr"

    def training_rows(self, user: Rows, read: Reader) -> tuple[Rows, Schedule]:
        config = self.config
        safety, sha256 = read(config.safety_data)
        k = round(config.safety_share / (1 - config.safety_share) * len(user))
        share = f"safeinstr: safety_share {config.safety_share:g} of {len(user)} user rows"
        if k == 0:
            raise AsftError(f"{share} is 0 safety rows (k = round(share / (1 - share) x rows)); raise --safety-share")
        if k > len(safety):
            raise AsftError(f"{share} needs {k} safety rows, {config.safety_data} has {len(safety)}; "
                            "lower --safety-share or give a larger safety file")
        drawn = torch.randperm(len(safety), generator=torch.Generator().manual_seed(config.seed))[:k].tolist()
        self.mixed = {"safety_data": config.safety_data, "safety_sha256": sha256, "safety_share": config.safety_share,
                      "safety_rows": k, "safety_file_rows": len(safety), "user_rows": len(user),
                      "draw": "torch.randperm(file rows) seeded by seed, first k, without replacement"}
        rows = user + [safety[i] for i in drawn]
        return rows, EpochShuffle(len(rows), config.batch_size, config.seed)

    def record(self, steps: int) -> dict:
        return {"safeinstr": self.mixed}


class LisaSchedule:
    """Lisa's steps: ``alignment_steps`` steps on the alignment rows, then ``finetune_steps`` on the
    user's, and again, starting with alignment (as the reference). Each side is its own seeded
    ``EpochShuffle``; the alignment rows follow the user's in the loop's rows (offset ``n_user``).
    Epochs are passes over the user's rows; the alignment phases are steps on top of them."""

    def __init__(self, user: EpochShuffle, alignment: EpochShuffle, alignment_steps: int, finetune_steps: int):
        self.user, self.alignment = user, alignment
        self.alignment_steps, self.finetune_steps = alignment_steps, finetune_steps

    def phase(self, step: int) -> str:
        return "alignment" if step % (self.alignment_steps + self.finetune_steps) < self.alignment_steps else "finetune"

    def done_before(self, step: int) -> tuple[int, int]:
        """(alignment steps, user steps) taken before step ``step``."""
        cycles, position = divmod(step, self.alignment_steps + self.finetune_steps)
        return (cycles * self.alignment_steps + min(position, self.alignment_steps),
                cycles * self.finetune_steps + max(0, position - self.alignment_steps))

    def indices(self, step: int) -> list[int]:
        aligned, user = self.done_before(step)
        if self.phase(step) == "finetune":
            return self.user.indices(user)
        return [self.user.n + i for i in self.alignment.indices(aligned)]

    def epoch(self, step: int) -> int:
        """The user epoch under way (an alignment phase counts with the user steps after it)."""
        return self.user.epoch(self.done_before(step)[1])

    def steps(self, epochs: int) -> int:
        user = self.user.steps(epochs)
        return user + self.alignment_steps * -(-user // self.finetune_steps)

    def epochs_done(self, steps: int) -> float:
        return self.user.epochs_done(self.done_before(steps)[1])


def proximal(trainable: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], rho: float) -> torch.Tensor:
    """rho/2 * sum ||theta - theta_switch||^2 over the trainable weights (whole under FSDP), float32."""
    total = sum((whole(p).float() - anchor[name]).square().sum() for name, p in trainable.items())
    return rho / 2 * total


class Lisa(Method):
    """Lisa (Huang et al. 2024): phases of alignment-data and user-data steps, each step adding
    rho/2 ||theta - theta_switch||^2, theta_switch the trainable weights at the last phase switch.

    Unlike the reference (git-disl/Lisa), on purpose: an alignment step is added to the user's steps,
    not taken in place of one of their batches, so every user row is trained on once per epoch; the
    proximal term is on from the first step (the reference leaves it off for the first 10 % of steps).
    """

    name = "lisa"

    def training_rows(self, user: Rows, read: Reader) -> tuple[Rows, Schedule]:
        config = self.config
        alignment, sha256 = read(config.alignment_data)
        if not alignment:
            raise AsftError(f"lisa: alignment_data {config.alignment_data} has no rows; give a file of alignment rows")
        self.source = {"alignment_data": config.alignment_data, "alignment_sha256": sha256,
                       "alignment_rows": len(alignment), "user_rows": len(user)}
        self.schedule = LisaSchedule(EpochShuffle(len(user), config.batch_size, config.seed),
                                     EpochShuffle(len(alignment), config.batch_size, config.seed),
                                     config.lisa_alignment_steps, config.lisa_finetune_steps)
        return user + alignment, self.schedule

    def start(self, trainable: dict[str, torch.Tensor]) -> None:
        self.trainable = trainable
        self.take_switch_point()

    def take_switch_point(self) -> None:
        self.switch_point = {name: p.float().clone() for name, p in gathered(self.trainable).items()}

    def objective(self, loss: torch.Tensor, penalty: torch.Tensor | None) -> torch.Tensor:
        return loss + proximal(self.trainable, self.switch_point, self.config.lisa_rho)

    def hooks(self) -> list[Hook]:
        return [self.switch_if_due]

    def switch_if_due(self, result: StepResult) -> None:
        """After the last step of a phase the next one starts from here: its proximal anchor."""
        if self.schedule.phase(result.step) != self.schedule.phase(result.step - 1):
            self.take_switch_point()

    def step_record(self, step: int) -> dict:
        return {"phase": self.schedule.phase(step)}

    def record(self, steps: int) -> dict:
        aligned, user = self.schedule.done_before(steps)
        return {"lisa": {**self.source, "alignment_steps": self.config.lisa_alignment_steps,
                         "finetune_steps": self.config.lisa_finetune_steps, "rho": self.config.lisa_rho,
                         "first_phase": "alignment", "steps_on_alignment": aligned, "steps_on_user": user}}


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Method, AsFT, SafeLoRA, SafeInstr, Lisa)}


def method_for(config: TrainConfig) -> Method:
    return METHODS[config.method](config)
