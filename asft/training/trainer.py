"""``train()``: one LoRA fine-tuning job (SFT, AsFT, Safe LoRA, SafeInstr or Lisa) from a ``TrainConfig``.

The pieces: ``recipe.LoraRecipe`` (setup / resume / loop / save), ``loop.Loop`` (the optimizer
loop, shared with the sandbox builder), ``methods`` (what each method adds to plain SFT),
``lora`` (LoRA layers, anchors, penalty), ``adapter`` (the folder written, Safe LoRA of a
saved adapter), ``checkpoint`` (resumable checkpoints).
"""

from __future__ import annotations

import os
import time
from typing import Callable

from asft import storage
from asft.errors import AsftError
from asft.modeling import pick_device
from asft.training import checkpoint as ckpt
from asft.training.adapter import ADAPTER_FILE, MANIFEST, headline, previous_result, project_existing
from asft.training.config import TrainConfig
from asft.training.distributed import join_world
from asft.training.lora import checkpoint_targets
from asft.training.lora import lora_layers as _lora_layers  # noqa: F401  (benchmarks/step.py)
from asft.training.lora import penalty as _penalty  # noqa: F401
from asft.training.recipe import SHUFFLE_NOTE, LoraRecipe

__all__ = ["ADAPTER_FILE", "MANIFEST", "SHUFFLE_NOTE", "previous_result", "train"]


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run one training job; writes the adapter folder to ``config.out`` atomically and returns
    a summary (``adapter`` folder plus the manifest's headline figures).

    ``on_step(metrics)`` is called after every optimizer step with step, epoch, lr, loss,
    penalty (None without a direction) and total (on rank 0 only, under a launcher).

    Under ``torchrun`` / ``accelerate launch`` every rank calls this; they train data-parallel
    (``distributed``) and rank 0 writes the output.
    """
    started = time.perf_counter()
    inputs = (config.model, config.data, config.direction, config.adapter, config.safety_data, config.alignment_data)
    storage.check_output(config.out, "adapter", inputs=inputs)
    if config.method == "safelora" and config.adapter:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise AsftError("projecting an existing adapter (--adapter) is one process; run it without torchrun/accelerate")
        manifest = project_existing(config, started)  # Safe LoRA of an adapter trained elsewhere
        return {"adapter": config.out, **headline(manifest)}
    checkpoint_targets(config)  # targets that match nothing fail before the model is loaded
    world = join_world(pick_device(config.device))
    try:
        if config.checkpoint_every and world.is_main:
            ckpt.prepare(config.checkpoints, inputs=inputs)
        world.barrier()
        manifest = LoraRecipe(config, on_step, started, world).run()
    finally:
        world.close()
    return {"adapter": config.out, **headline(manifest)}
