"""Data-parallel training under ``torchrun`` or ``accelerate launch``: torch.distributed and
DistributedDataParallel, set up from the launcher's environment.

Both launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the process
group is initialised from them (gloo on CPU, nccl on CUDA, one GPU per local rank). Without
them training is one process and nothing here is used.

Every rank draws the same global batch from ``EpochShuffle`` (``batch_size`` is the global
batch) and takes its contiguous share. The loss is the global label-token mean: each rank
sums its tokens' cross-entropy and divides by the step's label tokens over all ranks / world
size (counted on the host from the global batch, which every rank has), so DDP's gradient
average is the gradient of the one-process loss. The AsFT penalty is computed on each rank's
own (replicated) LoRA factors, with V once per device: every rank adds the same penalty
gradient, and averaging identical terms leaves it unchanged.

``parallel: fsdp`` shards the model with FSDP2's ``fully_shard`` instead (each decoder layer a
unit): the penalty is computed on the gathered factors (``whole``, a differentiable
all-gather), so every rank has the one-process value and each shard receives its part of the
penalty gradient; the trained weights are gathered before rank 0 writes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from asft.errors import AsftError
from asft.templates import IGNORE_INDEX
from asft.training.loop import Loop, Terms, to_device

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the adapter, metrics, manifest and checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over ranks (one all-reduce)."""
        if self.size == 1:
            return values
        values = values.clone()
        torch.distributed.all_reduce(values)
        return values / self.size

    def device(self, device: torch.device) -> torch.device:
        """One GPU per local rank; the CPU is shared."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.size > 1 else device

    def record(self) -> dict:
        return {"world_size": self.size, "backend": self.backend}

    def close(self) -> None:
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launched_rank() -> int:
    """The launcher's RANK (0 outside a launcher): decides which process prints."""
    return int(os.environ.get("RANK", "0"))


def join_world(device: torch.device) -> World:
    """The world the launcher started this process in; initialises the process group once."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise AsftError(f"WORLD_SIZE is {size} but {', '.join(missing)} is not set; start distributed training with "
                        "`torchrun --nproc_per_node N -m asft train ...` or `accelerate launch -m asft train ...`")
    backend = "nccl" if device.type == "cuda" else "gloo"
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if not torch.distributed.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=size)
    return World(rank, size, local_rank, backend)


def check_batch(batch_size: int, world: World) -> None:
    if batch_size % world.size:
        raise AsftError(f"batch_size {batch_size} is the global batch and must be divisible by the {world.size} "
                        f"training processes; use --batch-size {batch_size - batch_size % world.size or world.size}")


def share(indices: list[int], world: World) -> list[int]:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    n = len(indices)
    return indices[world.rank * n // world.size:(world.rank + 1) * n // world.size]


def label_tokens(example: dict[str, list[int]]) -> int:
    """Tokens the causal-LM loss averages over: labels after the one-position shift."""
    return sum(label != IGNORE_INDEX for label in example["labels"][1:])


@dataclass
class ShardedLoop(Loop):
    """The optimizer loop on one rank of a data-parallel run; ``model`` is DDP-wrapped."""

    world: World = World()

    def __post_init__(self):
        super().__post_init__()
        self._items = 1.0

    def batch(self, step: int) -> tuple[dict[str, torch.Tensor], int]:
        from asft.batching import collate

        everything = [self.examples[i] for i in self.sampler.indices(step)]
        mine = share(everything, self.world)
        self._items = sum(map(label_tokens, everything)) / self.world.size
        if not mine:  # an epoch's last batch with fewer rows than ranks: a row that counts for nothing
            mine = [{**everything[0], "labels": [IGNORE_INDEX] * len(everything[0]["labels"])}]
        return to_device(collate(mine, self.pad_id), self.device), sum(len(e["input_ids"]) for e in everything)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # sum over this rank's tokens / (global tokens / world): DDP's average is the global token mean
        return self.model(**batch, num_items_in_batch=self._items).loss

    def reported(self, terms: Terms) -> Terms:
        """Every rank sees the all-rank means (the same figures, so a divergence stops all ranks)."""
        parts = [terms.loss, terms.objective] + ([] if terms.penalty is None else [terms.penalty])
        means = self.world.mean(torch.stack([t.detach().float() for t in parts]))
        return Terms(loss=means[0], objective=means[1], penalty=None if terms.penalty is None else means[2])


def check_parallel(config, world: World) -> None:
    if world.size == 1 or config.parallel == "ddp":
        return
    if config.checkpoint_every:
        raise AsftError("--parallel fsdp writes no resumable checkpoints yet; use --parallel ddp with "
                        "--checkpoint-every, or drop --checkpoint-every")
    if config.load_in_4bit or config.load_in_8bit:
        raise AsftError("--parallel fsdp does not shard 4-/8-bit weights; use --parallel ddp with a quantized base")


def wrap_model(model: torch.nn.Module, world: World, device: torch.device, parallel: str = "ddp") -> torch.nn.Module:
    """The model as the loop calls it: one process: itself; ``ddp``: a DistributedDataParallel
    wrapper (gradients averaged); ``fsdp``: the model itself, sharded in place by FSDP2's
    ``fully_shard``, each decoder layer (the model's ``_no_split_modules``) a unit, then the root."""
    if world.size == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        units = set(getattr(model.base_model.model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in units:
                fully_shard(module)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP shard (a differentiable all-gather: every rank must call it), else itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gathered(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained weights whole (gathered from the ranks under FSDP), detached."""
    return {name: whole(p.detach()) for name, p in named.items()}


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """What of ``tensor`` this rank holds: its shard under FSDP, else all of it."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
