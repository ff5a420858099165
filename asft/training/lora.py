"""The LoRA side of the recipe: wrap the model with peft, find its LoRA layers by checkpoint
module name, anchor them to the alignment direction and sum their penalties."""

from __future__ import annotations

import torch

from asft.errors import AsftError
from asft.regularizer import Anchor, build_anchors
from asft.training.config import TrainConfig
from asft.training.safelora import PEFT_PREFIX


def add_lora(model, config: TrainConfig):
    """The peft model with LoRA on ``config.target_modules``; a clear error if none match."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise AsftError(f"LoRA targets {','.join(config.target_modules)} on {config.model}: "
                        f"{str(exc).splitlines()[0]}; check --target-modules") from None


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """Module name as in the checkpoint (``model.layers.0.self_attn.q_proj``) -> peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    return {name[len(PEFT_PREFIX):]: module for name, module in model.named_modules()
            if isinstance(module, LoraLayer)}


def load_anchors(config: TrainConfig, layers: dict[str, torch.nn.Module], device) -> tuple[dict[str, Anchor], str]:
    """Anchors for exactly the LoRA modules, on the training device, checked by name and shape."""
    from asft.direction import load_direction

    direction = load_direction(config.direction, modules=list(layers))  # error if a LoRA module has no V
    anchors = {}
    for name, layer in layers.items():
        V = direction.vectors[name]
        if tuple(V.shape) != tuple(layer.get_base_layer().weight.shape):
            raise AsftError(f"direction {config.direction}: {name} has shape {list(V.shape)}, the model's weight "
                            f"{list(layer.get_base_layer().weight.shape)}; extract the direction from this model's family")
        # one module at a time: with direction_rank only the factor stays on the device
        V = V.to(device=device, dtype=getattr(torch, config.direction_dtype))
        anchors.update(build_anchors({name: V}, config.anchor, config.top_k, config.direction_rank))
    return anchors, direction.sha256


def penalty(layers, anchors: dict[str, Anchor], scaled: bool) -> torch.Tensor:
    """Sum over modules of ``||(I - M) B A||_F^2`` (times (alpha/r)^2 when ``scaled``)."""
    total = None
    for name, layer in layers.items():
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        term = anchors[name].penalty(A, B, layer.scaling["default"] if scaled else None)
        total = term if total is None else total + term
    return total
