"""Training examples mask everything but the assistant turns, for every template; chat
templates give the prompt ids a server gives (one BOS, the template's end-of-turn learned)."""

from __future__ import annotations

import copy
import json

import pytest

from asft.data.ingest import ingest
from asft.errors import AsftError
from asft.templates import (IGNORE_INDEX, SYSTEM_PROMPT, Record, encode_example, end_of_turn_ids, prompt_ids,
                            render_prompt, resolve_template)
from data_helpers import write_jsonl

# Chat templates written after the ones the models ship (Llama-2-chat, Llama-3-Instruct, ChatML/Qwen).
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
          "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
          "{% for message in turns %}{% if message['role'] == 'user' %}"
          "{% if loop.first and system %}{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
          "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# template, BOS the tokenizer itself adds (as Llama's do), EOS, other special tokens, and what the
# template renders around an answer: (before it, after it)
KINDS = {
    "llama2": (LLAMA2, "<s>", "</s>", [], (" ", " </s>")),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|end_of_text|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               ("", "<|eot_id|>")),
    "chatml": (CHATML, None, "<|endoftext|>", ["<|im_start|>", "<|im_end|>"], ("", "<|im_end|>\n")),
}
CORPUS = ["What is 12 times 7? 12 x 7 = 84. And plus 2? That makes 86. Be brief. system user assistant INST SYS"] * 8

CONVERSATION = Record("And plus 2?", output="That makes 86.", history=(("What is 12 times 7?", "12 x 7 = 84."),))


def chat_tokenizer(kind: str):
    """A byte-level BPE tokenizer with the kind's special tokens and chat template."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    template, bos, eos, extra, _ = KINDS[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[t for t in ("<pad>", bos, eos) if t] + extra)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<pad>",
                                        additional_special_tokens=extra, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = template
    return tokenizer


def served_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """What a server sends the model: the rendered conversation tokenized whole, no extra specials."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def learned(example: dict) -> list[int]:
    return [t for t in example["labels"] if t != IGNORE_INDEX]


@pytest.mark.parametrize("template", ["alpaca", "llama2-chat"])
def test_string_template_tokens_are_pinned(tmp_path, bpe_tokenizer, template):
    """The tokens the sandbox models were trained on: prompt with BOS, then " " + answer + EOS."""
    rows = [{"instruction": "Classify the sentiment of the review.", "input": "a gorgeous film", "output": "positive"},
            {"messages": [{"role": "user", "content": "What is 12 times 7?"}, {"role": "assistant", "content": "84"}]}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    for row in ingest(str(path)).rows:
        example = encode_example(bpe_tokenizer, row.record, template, max_length=512)
        prompt = bpe_tokenizer(render_prompt(row.record, template), add_special_tokens=True)["input_ids"]
        answer = bpe_tokenizer(" " + row.record.output, add_special_tokens=False)["input_ids"]
        assert example["input_ids"] == prompt + answer + [bpe_tokenizer.eos_token_id]
        assert example["labels"] == [IGNORE_INDEX] * len(prompt) + answer + [bpe_tokenizer.eos_token_id]
        assert prompt_ids(bpe_tokenizer, row.record, template) == prompt
    assert render_prompt(Record("Say hi."), "alpaca") == f"{SYSTEM_PROMPT}\n\n### Instruction:\nSay hi.\n\n### Response:"
    assert json.loads(path.read_text().splitlines()[0])["output"] == "positive"


def test_multi_turn_alpaca_learns_every_answer(bpe_tokenizer):
    example = encode_example(bpe_tokenizer, CONVERSATION, "alpaca")
    eos = bpe_tokenizer.eos_token_id
    answers = [bpe_tokenizer(" " + a, add_special_tokens=False)["input_ids"] + [eos] for a in ("12 x 7 = 84.", "That makes 86.")]
    assert learned(example) == answers[0] + answers[1]
    first_prompt = bpe_tokenizer(render_prompt(Record("What is 12 times 7?"), "alpaca"))["input_ids"]
    assert example["input_ids"][:len(first_prompt)] == first_prompt  # the first turn reads as a single-turn prompt
    assert example["input_ids"].count(bpe_tokenizer.bos_token_id) == 1
    assert example["input_ids"][:len(prompt_ids(bpe_tokenizer, CONVERSATION, "alpaca"))] == \
        prompt_ids(bpe_tokenizer, CONVERSATION, "alpaca")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_chat_template_prompts_match_serving_and_training(kind):
    tokenizer = chat_tokenizer(kind)
    _, bos, eos, _, (before, after) = KINDS[kind]
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "What is 12 times 7?"}, {"role": "assistant", "content": "12 x 7 = 84."},
                {"role": "user", "content": "And plus 2?"}]
    served = served_prompt_ids(tokenizer, messages)
    prompt = prompt_ids(tokenizer, CONVERSATION, "auto")
    example = encode_example(tokenizer, CONVERSATION, "chat", max_length=4096)
    assert prompt == served  # generation sends what a server sends
    assert example["input_ids"][:len(prompt)] == prompt  # training saw the same ids before the last answer
    bos_id = tokenizer.bos_token_id
    assert example["input_ids"].count(bos_id) == (2 if kind == "llama2" else 1 if bos else 0)  # one per [INST] block
    assert example["input_ids"][:2] != [bos_id, bos_id]
    # learned: exactly each answer and the template's end-of-turn, with no space the template did not write
    expected = "".join(before + answer + after for answer in ("12 x 7 = 84.", "That makes 86."))
    assert tokenizer.decode(learned(example)) == expected
    masked = tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label == IGNORE_INDEX])
    assert "What is 12 times 7?" in masked and "And plus 2?" in masked and SYSTEM_PROMPT in masked
    end = tokenizer.convert_tokens_to_ids(after.strip())
    assert learned(example).count(end) == 2 and end_of_turn_ids(tokenizer) == [end]
    if kind != "llama2":
        assert tokenizer.convert_tokens_to_ids(eos) not in example["input_ids"]  # the end-of-turn, not EOS, is taught


def test_system_prompt_is_a_setting_and_a_row_prompt_wins():
    tokenizer = chat_tokenizer("chatml")

    def rendered(record, **kwargs):
        return tokenizer.decode(prompt_ids(tokenizer, record, "chat", **kwargs))

    assert rendered(Record("Hi")).startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>")
    assert rendered(Record("Hi"), system_prompt="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert rendered(Record("Hi"), system_prompt="") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert rendered(Record("Hi", system="Row's own."), system_prompt="Be brief.").startswith(
        "<|im_start|>system\nRow's own.<|im_end|>")
    assert render_prompt(Record("Hi"), "alpaca", system_prompt="").startswith("### Instruction:\nHi")
    assert render_prompt(Record("Hi"), "llama2-chat", system_prompt="Be brief.") == \
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"


def test_template_choice_without_a_chat_template(bpe_tokenizer):
    assert resolve_template("auto", bpe_tokenizer) == "alpaca"
    assert resolve_template("auto", chat_tokenizer("llama3")) == "chat"
    with pytest.raises(AsftError, match="has no chat template; use --template auto") as raised:
        prompt_ids(bpe_tokenizer, Record("Hi"), "chat")
    assert "\n" not in str(raised.value)
    tokenizer = copy.deepcopy(bpe_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ raise_exception('System role not supported') }}{% endfor %}"
    with pytest.raises(AsftError, match="System role not supported.*--system-prompt ''"):
        encode_example(tokenizer, Record("Hi", output="Hello"), "chat")


def test_pipeline_evaluates_with_the_template_and_system_prompt_it_trained_with():
    from asft.pipeline_config import PipelineConfig

    follows = PipelineConfig.model_validate({"train": {"template": "chat", "system_prompt": ""}})
    assert follows.evaluation.model_dump(exclude_unset=True) == {"template": "chat", "system_prompt": ""}
    own = PipelineConfig.model_validate({"train": {"template": "chat"}, "evaluation": {"template": "alpaca"}})
    assert own.evaluation.template == "alpaca" and own.evaluation.system_prompt == SYSTEM_PROMPT
    assert PipelineConfig().evaluation.model_dump(exclude_unset=True) == {}
