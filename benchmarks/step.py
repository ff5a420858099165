"""``asft_step_over_sft_step``: one full LoRA training step (forward, backward, AdamW) with the
AsFT penalty vs without, same Llama-shaped model (random weights) and batch.

The step mirrors ``asft.training.trainer``: fp32 weights, bf16 autocast on a GPU that has it,
V kept on the device once (fp32), the penalty in fp32 outside autocast through the trainer's
own ``_penalty`` and the regulariser's ``build_anchors``. A third arm keeps only the low-rank
factor of V (``direction_rank``); two more are the GPU speed-ups of issue 18: the anchor
products in bf16 with V stored in bf16 (``anchor_compute: bf16``, ``direction_dtype: bfloat16``)
and same-shaped modules batched into one product (``anchor_batching``), with each variant's
penalty error against the float32 per-module penalty (relative, at random LoRA factors).
"""

from __future__ import annotations

import torch

from benchmarks.timing import interleaved, median, paired_ratio, result

# r, alpha, dropout and targets are the paper's; the model is a narrow, shallow Llama-2 shape
SHAPES = {
    "tiny": dict(hidden=64, intermediate=172, layers=2, heads=4, vocab=1024, batch=2, seq=16, repeats=3, warmup=1),
    "quick": dict(hidden=1024, intermediate=2752, layers=2, heads=8, vocab=32000, batch=4, seq=128, repeats=12, warmup=2),
    "full": dict(hidden=2048, intermediate=5504, layers=2, heads=16, vocab=32000, batch=4, seq=256, repeats=7, warmup=2),
    "full-cuda": dict(hidden=4096, intermediate=11008, layers=4, heads=32, vocab=32000, batch=8, seq=512, repeats=15, warmup=3),
}
LORA = dict(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])


def shapes_for(mode: str, device: torch.device) -> dict:
    return SHAPES["full-cuda" if mode == "full" and device.type == "cuda" else mode]


def _lora_model(s: dict, device: torch.device):
    """A random Llama of the benchmark's shapes with LoRA on q and v, in training mode."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["heads"], max_position_embeddings=max(s["seq"], 64))
    with device:  # initialise on the device: a 1B-parameter random init on the host takes longer than the benchmark
        base = LlamaForCausalLM(config)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **LORA))
    model.train()
    return model


def _variant_errors(layers, penalty, variants: dict) -> dict[str, float]:
    """Relative penalty error of each variant (anchors, groups) vs the float32 per-module penalty,
    at random B (peft starts B at zero, where every variant is exactly 0)."""
    saved = {name: layer.lora_B["default"].weight.detach().clone() for name, layer in layers.items()}
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B["default"].weight.normal_(0, 0.02)
        values = {name: penalty(layers, anchors, False, groups).item() for name, (anchors, groups) in variants.items()}
        for name, layer in layers.items():
            layer.lora_B["default"].weight.copy_(saved[name])
    reference = values.pop("float32")
    return {name: float(f"{abs(v - reference) / reference:.3g}") for name, v in values.items()}


def run(mode: str, device: torch.device) -> dict:
    from asft.regularizer import build_anchors, group_anchors
    from asft.training.trainer import _lora_layers, _penalty

    s = shapes_for(mode, device)
    model = _lora_model(s, device)
    layers = _lora_layers(model)
    vectors = {name: 1e-3 * torch.randn(layer.get_base_layer().weight.shape, device=device)
               for name, layer in layers.items()}
    anchors = build_anchors(vectors, "fro")
    rank = s["hidden"] // 16
    low_rank = build_anchors(vectors, "fro", rank=rank)
    bf16 = build_anchors({n: V.bfloat16() for n, V in vectors.items()}, "fro", compute_dtype=torch.bfloat16)
    batched_anchors = build_anchors(vectors, "fro")
    batched = group_anchors(batched_anchors)
    del vectors
    errors = _variant_errors(layers, _penalty, {"float32": (anchors, None), "bf16": (bf16, None),
                                                "batched": (batched_anchors, batched)})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0)
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def step(anchor_set, groups=None) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
        objective = loss if anchor_set is None else loss + 1.0 * _penalty(layers, anchor_set, False, groups)
        objective.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.item()  # the trainer logs it every step

    def penalty_only() -> None:  # what the AsFT step adds, alone: a low-noise estimate of the overhead
        _penalty(layers, anchors, False).backward()
        optimizer.zero_grad(set_to_none=True)

    cpu: dict[str, list[float]] = {}
    # "sft_again" is an A/A control: its ratio to "sft" is what noise alone gives
    seconds = interleaved({"sft": lambda: step(None), "asft": lambda: step(anchors),
                           "asft_lowrank": lambda: step(low_rank), "sft_again": lambda: step(None),
                           "asft_bf16": lambda: step(bf16), "asft_batched": lambda: step(batched_anchors, batched),
                           "penalty_only": penalty_only},
                          s["repeats"], s["warmup"], device, cpu_seconds=cpu)
    sft, asft, lowrank, alone = (median(seconds[k]) for k in ("sft", "asft", "asft_lowrank", "penalty_only"))
    ratio = paired_ratio(seconds["asft"], seconds["sft"])
    cpu_ratio = paired_ratio(cpu["asft"], cpu["sft"]) if device.type == "cpu" else None
    return result(
        "asft_step_over_sft_step", ratio, "<= 1.03", ratio <= 1.03,
        ratio_method="median over rounds of asft / sft timed in the same round",
        sft_again_over_sft_step=round(paired_ratio(seconds["sft_again"], seconds["sft"]), 4),
        asft_median_s=round(asft, 5), sft_median_s=round(sft, 5),
        asft_lowrank_step_over_sft_step=round(paired_ratio(seconds["asft_lowrank"], seconds["sft"]), 4),
        asft_lowrank_median_s=round(lowrank, 5),
        asft_bf16_step_over_sft_step=round(paired_ratio(seconds["asft_bf16"], seconds["sft"]), 4),
        asft_batched_step_over_sft_step=round(paired_ratio(seconds["asft_batched"], seconds["sft"]), 4),
        penalty_relative_error_vs_float32=errors,
        lowrank_rank=rank, penalty_fwd_bwd_median_s=round(alone, 6),
        sft_plus_penalty_over_sft_step=round((sft + alone) / sft, 4),
        asft_step_over_sft_step_cpu_time=None if cpu_ratio is None else round(cpu_ratio, 4), seconds={k: [round(x, 5) for x in v] for k, v in seconds.items()},
        shapes={**{k: s[k] for k in ("hidden", "intermediate", "layers", "heads", "vocab", "batch", "seq")},
                "lora": LORA, "lora_modules": len(layers)},
        dtype={"weights": "float32", "autocast": "bfloat16" if autocast else None, "direction": "float32",
               "penalty": "float32"},
        device=str(device), repeats=s["repeats"], warmup=s["warmup"], order="interleaved " + ", ".join(seconds))
