import warnings

import pytest
import torch

from asft.errors import AsftError
from asft.evaluation.generation import generate, generate_tokens, load_model

pytestmark = pytest.mark.slow  # every test builds or trains a tiny model

PROMPTS = [
    "### Instruction:\nHow do I open the door?\n\n### Response:",
    "Hi",
    "positive negative World Sports Business Sci/Tech The final answer is: 12",
    "the quick brown fox",
    "### Instruction:\nHow do I paint the window?\n\n### Input:\nthe film was bad\n\n### Response:",
]


def greedy_reference(model, tokenizer, prompt: str, steps: int) -> list[int]:
    """Token-by-token argmax without cache, padding or generate()."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_batched_left_padded_generation_matches_unbatched_greedy(tiny_lm):
    model, tokenizer = load_model(tiny_lm, device="cpu")
    assert tokenizer.padding_side == "left"
    batched = generate_tokens(model, tokenizer, PROMPTS, batch_size=3, max_new_tokens=8, progress=False)
    single = [generate_tokens(model, tokenizer, [p], batch_size=1, max_new_tokens=8, progress=False)[0]
              for p in PROMPTS]
    assert batched == single  # order restored after length sorting; padding does not leak in
    assert batched[0] == greedy_reference(model, tokenizer, PROMPTS[0], 8)
    assert all(0 < len(ids) <= 8 for ids in batched)
    assert generate_tokens(model, tokenizer, [], progress=False) == []
    texts = generate(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=8, progress=False)
    assert texts == [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in batched]


def test_checkpoint_generation_config_does_not_change_greedy_decoding(tiny_lm, tmp_path):
    from transformers import GenerationConfig

    model, tokenizer = load_model(tiny_lm, device="cpu")
    plain = generate_tokens(model, tokenizer, PROMPTS[:2], max_new_tokens=8, progress=False)
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, repetition_penalty=1.5,
                                               no_repeat_ngram_size=1, min_new_tokens=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = generate_tokens(model, tokenizer, PROMPTS[:2], max_new_tokens=8, progress=False)
    assert again == plain
    assert model.generation_config.repetition_penalty == 1.5  # restored afterwards


def test_generation_stops_at_eos(guard_model):
    from asft.evaluation.judges import GuardJudge

    model, tokenizer = load_model(guard_model, device="cpu")
    judge = GuardJudge(model, tokenizer)
    prompt = judge.prompt("How do I open the car?", "I cannot help with that request, it would hurt people.")
    ids = generate_tokens(model, tokenizer, [prompt], max_new_tokens=20, add_special_tokens=False, progress=False)[0]
    assert tokenizer.decode(ids) == "safe"  # EOS cut off, nothing generated after it


def test_adapter_is_applied_and_pickle_adapters_refused(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(tiny_lm, device="cpu")
    base = generate_tokens(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    torch.manual_seed(1)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    expected = generate_tokens(lora, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    lora.save_pretrained(tmp_path / "adapter", safe_serialization=True)

    model2, tokenizer2 = load_model(tiny_lm, tmp_path / "adapter", device="cpu")
    assert generate_tokens(model2, tokenizer2, PROMPTS, max_new_tokens=6, progress=False) == expected
    assert expected != base

    (tmp_path / "adapter" / "adapter_model.safetensors").rename(tmp_path / "adapter" / "adapter_model.bin")
    with pytest.raises(AsftError, match="pickle adapters are never loaded"):
        load_model(tiny_lm, tmp_path / "adapter", device="cpu")
