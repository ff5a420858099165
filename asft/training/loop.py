"""The optimizer loop every training in asft runs: LoRA fine-tuning (every method of
``methods``) and the sandbox builder's full fine-tuning of its tiny base and aligned models.

One step: set the step's learning rate, take its batch from the sampler, compute the loss
(autocast), let the objective add its terms (the AsFT penalty, Lisa's proximal term),
backward through the grad scaler, clip, step, then call the hooks (metrics, divergence stop,
``on_step``, checkpoints). What differs between trainings is data: the sampler, the
learning-rate schedule, the objective and the hooks. A data-parallel rank
(``distributed.ShardedLoop``) overrides three pieces: its ``batch`` (its share), ``forward``
(the global token mean) and ``reported`` (the all-rank means the hooks see).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from asft.batching import collate


@dataclass
class Terms:
    """What one step optimises: ``objective`` is backpropagated, ``loss`` and ``penalty`` logged."""

    loss: torch.Tensor
    objective: torch.Tensor
    penalty: torch.Tensor | None = None


@dataclass
class StepResult:
    """One finished optimizer step, as the hooks see it (``step`` counts steps done, from 1)."""

    step: int
    total_steps: int
    epoch: int
    lr: float
    batch: dict[str, torch.Tensor]
    terms: Terms
    tokens: int = 0  # attention tokens of the whole step's batch (all ranks), counted on the host
    postfix: dict[str, str] = field(default_factory=dict)  # hooks fill it for the progress bar


class Sampler(Protocol):
    """Which rows each step trains on (``step`` from 0), and the epoch it belongs to."""

    def epoch(self, step: int) -> int: ...

    def indices(self, step: int) -> list[int]: ...


class Schedule(Sampler, Protocol):
    """A sampler that also knows a training's length: what the LoRA recipe asks of a method's sampler."""

    def steps(self, epochs: int) -> int: ...

    def epochs_done(self, steps: int) -> float: ...


Objective = Callable[[torch.Tensor, dict], Terms]
Hook = Callable[[StepResult], None]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A host batch on the device. To a GPU through pinned memory, asynchronously: a pageable
    copy would make the host wait for the GPU to finish the previous step before queueing this one."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def plain_loss(loss: torch.Tensor, batch: dict) -> Terms:
    """The objective of supervised fine-tuning: the model's loss alone."""
    return Terms(loss=loss, objective=loss)


class EpochShuffle:
    """Epochs of ``ceil(n / batch_size)`` batches; rows reshuffled every epoch with torch.randperm
    seeded by (seed, epoch), so any step's batch is known without replaying earlier ones (resume)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = -(-n // batch_size)
        self._order: tuple[int, list[int]] | None = None

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def steps(self, epochs: int) -> int:
        return self.steps_per_epoch * epochs

    def epochs_done(self, steps: int) -> float:
        return steps / self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = epoch, torch.randperm(self.n, generator=generator).tolist()
        return self._order[1][position * self.batch_size:(position + 1) * self.batch_size]


@dataclass
class Loop:
    """Runs optimizer steps ``start .. total_steps`` over ``examples`` (token-id dicts)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    examples: list[dict[str, list[int]]]
    pad_id: int
    sampler: Sampler
    lr_at: Callable[[int], float]  # step (from 0) -> learning rate
    device: torch.device
    objective: Objective = plain_loss
    autocast_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    clip_norm: float | None = None
    hooks: list[Hook] = field(default_factory=list)
    show_progress: bool = True

    def __post_init__(self):
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler("cuda", enabled=False)

    def run(self, total_steps: int, start: int = 0, label: str = "train") -> int:
        """Steps from ``start`` to ``total_steps``; returns the number of steps done."""
        from asft.progress import progress_bar

        self.model.train()
        bar = progress_bar(total_steps, label, initial=start, unit="steps", enabled=self.show_progress)
        for step in range(start, total_steps):
            self.advance(step, total_steps, bar)
        bar.close()
        return max(start, total_steps)

    def advance(self, step: int, total_steps: int, bar) -> StepResult:
        """One step as ``run`` takes it: the optimizer step, the hooks, the progress bar."""
        result = self.step(step, total_steps)
        for hook in self.hooks:
            hook(result)
        bar.update(1)
        if result.postfix:
            bar.set_postfix(**result.postfix)
        return result

    def step(self, step: int, total_steps: int) -> StepResult:
        """One optimizer step (``step`` counts from 0)."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch, tokens = self.batch(step)
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
            loss = self.forward(batch)
        terms = self.objective(loss, batch)  # outside autocast: penalties are float32
        self.scaler.scale(terms.objective).backward()
        if self.clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(step + 1, total_steps, self.sampler.epoch(step), lr, batch, self.reported(terms), tokens)

    def batch(self, step: int) -> tuple[dict[str, torch.Tensor], int]:
        """The step's batch on the device and its attention-token count (taken on the host: no device sync)."""
        batch = collate([self.examples[i] for i in self.sampler.indices(step)], self.pad_id)
        return to_device(batch, self.device), int(batch["attention_mask"].sum())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's loss on the batch (the mean over its label tokens)."""
        return self.model(**batch).loss

    def reported(self, terms: Terms) -> Terms:
        """The terms the hooks see: this process's own (a distributed loop reports all ranks' means)."""
        return terms
