"""``train()``: one LoRA fine-tuning job (SFT, AsFT or Safe LoRA) from a ``TrainConfig``.

The pieces: ``recipe.LoraRecipe`` (setup / resume / loop / save), ``loop.Loop`` (the optimizer
loop, shared with the sandbox builder), ``methods`` (what SFT, AsFT and Safe LoRA add),
``lora`` (LoRA layers, anchors, penalty), ``adapter`` (the folder written, Safe LoRA of a
saved adapter), ``checkpoint`` (resumable checkpoints).
"""

from __future__ import annotations

import time
from typing import Callable

from asft import storage
from asft.training import checkpoint as ckpt
from asft.training.adapter import ADAPTER_FILE, MANIFEST, headline, previous_result, project_existing
from asft.training.config import TrainConfig
from asft.training.lora import checkpoint_targets
from asft.training.lora import lora_layers as _lora_layers  # noqa: F401  (benchmarks/step.py)
from asft.training.lora import penalty as _penalty  # noqa: F401
from asft.training.recipe import SHUFFLE_NOTE, LoraRecipe

__all__ = ["ADAPTER_FILE", "MANIFEST", "SHUFFLE_NOTE", "previous_result", "train"]


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run one training job; writes the adapter folder to ``config.out`` atomically and returns
    a summary (``adapter`` folder plus the manifest's headline figures).

    ``on_step(metrics)`` is called after every optimizer step with step, epoch, lr, loss,
    penalty (None without a direction) and total.
    """
    started = time.perf_counter()
    storage.check_output(config.out, "adapter", inputs=(config.model, config.data, config.direction, config.adapter))
    if config.checkpoint_every:
        ckpt.prepare(config.checkpoints, inputs=(config.model, config.data, config.direction))
    if config.method == "safelora" and config.adapter:
        manifest = project_existing(config, started)  # Safe LoRA of an adapter trained elsewhere
    else:
        checkpoint_targets(config)  # targets that match nothing fail before the model is loaded
        manifest = LoraRecipe(config, on_step, started).run()
    return {"adapter": config.out, **headline(manifest)}
