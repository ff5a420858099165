"""The tiny sandbox with its q/v direction, a synthetic fine-tuned checkpoint and a real PEFT
adapter, shared by the landscape and inspection tests."""

from __future__ import annotations

import pytest
import torch

from asft.landscape import WeightShift, perpendicular_direction


@pytest.fixture(scope="session")
def world(tiny_sandbox, tmp_path_factory):
    """The sandbox, its q/v direction, a full checkpoint at W_a + 0.3 V + 0.2 d_perp (seed 0)
    and a LoRA adapter (r 4, alpha 8, random B) saved by PEFT itself."""
    from peft import LoraConfig, get_peft_model

    from asft.direction import DirectionConfig, extract_direction, load_direction
    from asft.evaluation.generation import load_model

    folder = tmp_path_factory.mktemp("landscape")
    direction = str(folder / "direction")
    extract_direction(DirectionConfig(aligned=tiny_sandbox["aligned"], base=tiny_sandbox["base"], out=direction))
    V = load_direction(direction).vectors
    model, tokenizer = load_model(tiny_sandbox["aligned"], device="cpu")
    with WeightShift(model, [V, perpendicular_direction(V, seed=0)]) as shift:
        shift.move(0.3, 0.2)
        model.save_pretrained(folder / "moved")
        tokenizer.save_pretrained(folder / "moved")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    peft_model.save_pretrained(folder / "adapter")
    return {**tiny_sandbox, "direction": direction, "moved": str(folder / "moved"), "adapter": str(folder / "adapter"),
            "peft_model": peft_model}
