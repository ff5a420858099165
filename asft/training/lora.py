"""The LoRA side of the recipe: resolve the targets (given, or the model type's preset), wrap
the model with peft, find its LoRA layers by checkpoint module name, anchor them to the
alignment direction and sum their penalties.

Orientation: peft's LoRA update ``B A`` is (out, in) for nn.Linear and for transformers'
Conv1D alike (for Conv1D peft sets fan_in_fan_out and transposes only when merging), so it
meets V, stored in the same (out, in) layout by `asft direction`, without any transpose.
"""

from __future__ import annotations

import torch

from asft.architectures import Targets, checkpoint_weights, choose_targets, is_transposed, model_type, resolve_targets
from asft.errors import AsftError
from asft.regularizer import Anchor, AnchorGroup, build_anchors
from asft.training.config import TrainConfig
from asft.training.distributed import whole
from asft.training.safelora import PEFT_PREFIX


def checkpoint_targets(config: TrainConfig) -> Targets:
    """The run's targets from the checkpoint's config.json and safetensors headers, before any
    model is loaded: a clear error naming the model's own modules when nothing matches."""
    from asft.modeling import resolve_checkpoint

    folder = resolve_checkpoint(config.model)
    return resolve_targets(model_type(folder), config.target_modules, config.target_regex,
                           checkpoint_weights(folder, "model"), f"model {config.model}", "LoRA targets")


def model_targets(model, config: TrainConfig) -> Targets:
    """The same resolution on a loaded (not yet wrapped) model."""
    weights = {name[: -len(".weight")]: p.dim() for name, p in model.named_parameters() if name.endswith(".weight")}
    return resolve_targets(model.config.model_type, config.target_modules, config.target_regex, weights,
                           f"model {config.model}", "LoRA targets")


def add_lora(model, config: TrainConfig):
    """The peft model with LoRA on the run's targets; a clear error if none match."""
    from peft import LoraConfig, get_peft_model

    targets = model_targets(model, config)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets.for_peft(), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise AsftError(f"{targets.describe('LoRA targets')} on {config.model}: {str(exc).splitlines()[0]}; "
                        "check --target-modules") from None


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """Module name as in the checkpoint (``model.layers.0.self_attn.q_proj``) -> peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    return {name[len(PEFT_PREFIX):]: module for name, module in model.named_modules()
            if isinstance(module, LoraLayer)}


def targets_record(model, config: TrainConfig) -> dict:
    """What the adapter manifest says about the targets: the preset or the user's patterns, the
    LoRA modules, those stored (in, out) in the checkpoint (Conv1D), and the fused-q/k/v anchoring."""
    layers = lora_layers(model)
    targets = choose_targets(model.config.model_type, config.target_modules, config.target_regex)
    return {**targets.record(), "lora_modules": sorted(layers),
            "transposed_modules": sorted(n for n, layer in layers.items() if is_transposed(layer.get_base_layer())),
            "fused_qkv_anchor": config.fused_qkv_anchor}


def load_anchors(config: TrainConfig, layers: dict[str, torch.nn.Module], device) -> tuple[dict[str, Anchor], str]:
    """Anchors for exactly the LoRA modules, on the training device, checked by name, shape and orientation."""
    from asft.direction import load_direction

    direction = load_direction(config.direction, modules=list(layers))  # error if a LoRA module has no V
    blocks = direction.qv_row_blocks(list(layers), config.direction) if config.fused_qkv_anchor == "qv" else {}
    anchors = {}
    for name, layer in layers.items():
        V = direction.vectors[name]
        direction.check_orientation(name, is_transposed(layer.get_base_layer()), config.direction)
        if tuple(V.shape) != (layer.out_features, layer.in_features):
            raise AsftError(f"direction {config.direction}: {name} has shape {list(V.shape)}, the model's weight "
                            f"(out, in) {[layer.out_features, layer.in_features]}; "
                            "extract the direction from this model's family")
        # one module at a time: with direction_rank only the factor stays on the device
        V = V.to(device=device, dtype=getattr(torch, config.direction_dtype))
        anchors.update(build_anchors({name: V}, config.anchor, config.top_k, config.direction_rank, blocks,
                                     compute_dtype=torch.bfloat16 if config.anchor_compute == "bf16" else None))
    return anchors, direction.sha256


def penalty(layers, anchors: dict[str, Anchor], scaled: bool,
            groups: tuple[list[AnchorGroup], list[str]] | None = None) -> torch.Tensor:
    """Sum over modules of ``||(I - M) B A||_F^2`` (times (alpha/r)^2 when ``scaled``); with
    ``groups`` (``regularizer.group_anchors``) same-shaped modules are one batched product."""
    def factors(name):  # gathered where FSDP shards them: every rank computes the whole penalty
        layer = layers[name]
        return whole(layer.lora_A["default"].weight), whole(layer.lora_B["default"].weight)

    def scaling(name):
        return layers[name].scaling["default"] if scaled else None

    batched, single = groups if groups is not None else ([], list(layers))
    terms = [anchors[name].penalty(*factors(name), scaling(name)) for name in single]
    for group in batched:
        scalings = {scaling(name) for name in group.names}
        if len(scalings) == 1:
            terms.append(group.penalty([factors(name) for name in group.names], scalings.pop()))
        else:  # modules with their own alpha/r (peft's rank_pattern): one at a time
            terms += [anchors[name].penalty(*factors(name), scaling(name)) for name in group.names]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
