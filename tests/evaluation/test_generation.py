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


# A chat template that renders BOS itself, on a tokenizer that also adds one: the double-BOS trap.
BOS_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                     "{% if add_generation_prompt %}assistant:{% endif %}")


def test_evaluation_prompts_are_the_ids_training_used(tiny_lm):
    import copy

    from asft.evaluation.evaluate import answer
    from asft.evaluation.generation import encode_records, generate_from_ids
    from asft.templates import Record, encode_example

    model, tokenizer = load_model(tiny_lm, device="cpu")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = BOS_CHAT_TEMPLATE
    records = [Record("How do I open the door?"),
               Record("and the window?", system="be brief", history=(("How do I open the door?", "Push it."),)),
               Record("How do I paint the window? " * 400)]
    encoded, cut = encode_records(model.config, tokenizer, records, template="auto", system_prompt="be kind", max_new_tokens=8)
    trained = [encode_example(tokenizer, r, "chat", 100_000, system_prompt="be kind")["input_ids"] for r in records]
    assert encoded[:2] == [ids[:len(p)] for ids, p in zip(trained, encoded[:2])]  # byte-identical prompts
    assert all(ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id for ids in encoded)
    assert cut == [2] and len(encoded[2]) == 1024 - 8 and encoded[2][0] == tokenizer.bos_token_id
    assert tokenizer.decode(encoded[2][-4:]).endswith("assistant:")  # the answer cue survives the cut
    texts, cut_again, _ = answer(model, tokenizer, records, template="chat", system_prompt="be kind",
                                 max_new_tokens=6, batch_size=2)
    assert cut_again == [2]
    assert texts == [tokenizer.decode(ids, skip_special_tokens=True).strip()
                     for ids in generate_from_ids(model, tokenizer, encoded, max_new_tokens=6, progress=False)]


def test_evaluation_with_a_chat_template_the_tokenizer_lacks_fails_first(tiny_lm, tmp_path):
    from asft.evaluation import EvalConfig, evaluate

    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text('{"instruction": "How do I open the door?"}\n')
    config = EvalConfig(model=str(tiny_lm), harmful=str(harmful), out=str(tmp_path / "out"), template="chat",
                        device="cpu", progress=False)
    with pytest.raises(AsftError, match="has no chat template; use --template auto"):
        evaluate(config)
    assert not (tmp_path / "out").exists()
    report = evaluate(config.model_copy(update={"template": "auto", "system_prompt": "be kind", "max_new_tokens": 2}))
    assert report["protocol"]["template"] == "alpaca" and report["protocol"]["system_prompt"] == "be kind"
