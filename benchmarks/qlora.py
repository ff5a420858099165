"""``qlora_asft_step_over_sft_step``: with the base in 4-bit NF4 (``load_in_4bit``, QLoRA), the
recipe's AsFT step (dense float32 V) vs its SFT step, same checkpoint, batches and LoRA, steps
interleaved; also the 4-bit SFT step over the float32-base SFT step. CUDA with bitsandbytes
only: elsewhere ``asft train`` refuses ``--load-in-4bit`` with one line, and so does this.

    python -m benchmarks.qlora [--quick | --tiny] [--device cuda] [--json] [--out FILE]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.timing import interleaved, median, paired_ratio, result
from benchmarks.training_workspace import build, main_for, recipe_stepper, shapes_for


def run(mode: str, device: torch.device) -> dict:
    from asft.training import TrainConfig
    from asft.training.recipe import quantization_config

    # the one-line refusal of a CPU or a missing bitsandbytes, before the world is built
    quantization_config(TrainConfig(model="-", data="-", out="-", method="sft", load_in_4bit=True), device)
    s = shapes_for(mode, device)
    with tempfile.TemporaryDirectory(prefix="asft-bench-qlora-") as tmp:
        root = Path(tmp)
        fields = build(root, s, device)
        arms = {}
        for name, method, quantized in (("sft_4bit", "sft", True), ("asft_4bit", "asft", True),
                                        ("sft_fp32_base", "sft", False)):
            recipe, advance = recipe_stepper({**fields, "load_in_4bit": quantized}, method, root / name)
            arms[name] = (recipe, advance)
        position = {"step": 0}
        total = arms["sft_4bit"][0].total_steps

        def arm(name):
            def one_step():
                arms[name][1](position["step"] % total)
            return one_step

        calls = {name: arm(name) for name in arms}
        warmup = max(1, s["steps"] // 8)
        repeats = total - warmup
        seconds = interleaved({**calls, "next": lambda: position.update(step=position["step"] + 1)},
                              repeats, warmup, device)
        plan = arms["asft_4bit"][0].memory_plan
    ratio = paired_ratio(seconds["asft_4bit"], seconds["sft_4bit"])
    return result(
        "qlora_asft_step_over_sft_step", ratio, "<= 1.03", ratio <= 1.03,
        sft_4bit_over_sft_fp32_base_step=round(paired_ratio(seconds["sft_4bit"], seconds["sft_fp32_base"]), 4),
        median_s={k: round(median(v), 5) for k, v in seconds.items() if k != "next"},
        weights_bytes_4bit=plan["weights_bytes"], shapes={k: s[k] for k in ("hidden", "intermediate", "layers", "heads")},
        dtype={"base": "nf4 (double quant)", "lora": "float32", "direction": "float32", "penalty": "float32"},
        device=str(device), repeats=repeats, warmup=warmup)


main = main_for(run, "python -m benchmarks.qlora")

if __name__ == "__main__":
    raise SystemExit(main())
