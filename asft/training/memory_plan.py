"""The memory plan of a training run, printed before the first step and kept in the manifest.

Bytes per device: the base weights at their dtype (4-/8-bit ones as stored), the LoRA weights,
their gradients, AdamW's two moments (and step counters), what the anchors keep of V (dense or
its rank-k factor) and an activation estimate. The first five are read off the tensors
themselves; activations are an estimate (Korthikanti et al. 2022: a transformer layer keeps
``s b h (34 + 5 a s / h)`` bytes at 16 bits for the backward pass; with gradient checkpointing
only each layer's input is kept, plus one layer being recomputed), plus the logits in float32.
"""

from __future__ import annotations

from asft.regularizer import Anchor
from asft.training.distributed import local_part

GIB = 1024 ** 3


def tensor_bytes(tensors) -> int:
    """Bytes this device holds of ``tensors`` (its shard of an FSDP-sharded one)."""
    return sum(local_part(t).numel() * t.element_size() for t in tensors)


def activation_bytes(model_config, sequences: int, length: int, precision: str, checkpointed: bool) -> int | None:
    """Estimated activation memory of one forward/backward of ``sequences`` x ``length`` tokens."""
    try:
        h, layers = model_config.hidden_size, model_config.num_hidden_layers
        heads, vocab = model_config.num_attention_heads, model_config.vocab_size
    except AttributeError:  # a config without the usual names: no estimate rather than a wrong one
        return None
    width = 2 if precision in ("bf16", "fp16") else 4
    tokens = sequences * length
    per_layer = tokens * h * (34 + 5 * heads * length / h) * width / 2
    kept = layers * tokens * h * width + per_layer if checkpointed else layers * per_layer
    logits = 2 * tokens * vocab * 4  # float32 logits and their gradient
    return int(kept + logits)


def memory_plan(model, anchors: dict[str, Anchor], config, examples: list[dict], precision: str, world) -> dict:
    """Bytes per device of the run (see the module docstring); one rank's share of the batch."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    weights: dict[str, int] = {}
    for p in frozen:
        dtype = str(p.dtype).removeprefix("torch.")
        weights[dtype] = weights.get(dtype, 0) + tensor_bytes([p])
    lora = tensor_bytes(trainable)
    # AdamW: exp_avg and exp_avg_sq like the parameter, plus a float32 step counter per parameter
    optimizer = 2 * lora + 4 * len(trainable)
    direction = tensor_bytes(t for anchor in anchors.values() for t in anchor.tensors())
    sequences = -(-config.batch_size // world.size)
    length = max((len(e["input_ids"]) for e in examples), default=0)
    activations = activation_bytes(model.config, sequences, length, precision, config.gradient_checkpointing)
    total = sum(weights.values()) + 2 * lora + optimizer + direction + (activations or 0)
    return {"weights_bytes": weights, "lora_bytes": lora, "lora_parameters": sum(local_part(p).numel() for p in trainable),
            "gradients_bytes": lora, "optimizer_bytes": optimizer, "direction_bytes": direction,
            "direction_kept": "none" if not anchors else ("dense V" if config.direction_rank is None
                                                          else f"rank-{config.direction_rank} factor"),
            "activations_bytes_estimate": activations, "activation_shape": [sequences, length],
            "gradient_checkpointing": config.gradient_checkpointing, "total_bytes_estimate": total}


def describe_plan(plan: dict) -> str:
    """The plan as a few lines for stderr."""
    def size(n):
        return "?" if n is None else f"{n / GIB:.3f} GiB" if n >= GIB / 10 else f"{n / 1024 ** 2:.2f} MiB"

    weights = ", ".join(f"{size(n)} {dtype}" for dtype, n in plan["weights_bytes"].items())
    sequences, length = plan["activation_shape"]
    return "\n".join([
        "asft train: memory plan per device",
        f"  base weights      {weights}",
        (f"  LoRA weights      {size(plan['lora_bytes'])} ({plan['lora_parameters']:,} parameters), "
         f"gradients {size(plan['gradients_bytes'])}"),
        f"  AdamW state       {size(plan['optimizer_bytes'])}",
        f"  direction         {size(plan['direction_bytes'])} ({plan['direction_kept']})",
        (f"  activations       ~{size(plan['activations_bytes_estimate'])} ({sequences} x {length} tokens"
         f"{', gradient checkpointing' if plan['gradient_checkpointing'] else ''})"),
        f"  total             ~{size(plan['total_bytes_estimate'])}"])
