"""`asft train` on multi-turn chat data with the model's own chat template (ChatML), and the
one-line error for a chat template the tokenizer does not have."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from asft.templates import IGNORE_INDEX, Record, encode_example
from asft.training import TrainConfig
from asft.training.recipe import read_examples
from cli_runner import run_cli

pytestmark = pytest.mark.slow

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def chat_model(llama_pair, tokenizer, tmp_path_factory):
    """The tiny aligned Llama with a ChatML tokenizer (the conftest word-level one plus its specials)."""
    folder = tmp_path_factory.mktemp("chat") / "aligned"
    shutil.copytree(llama_pair[0], folder)
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat_tokenizer.chat_template = CHATML
    chat_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_rows(tmp_path_factory):
    """Multi-turn chat and ShareGPT rows in the word-level tokenizer's words."""
    rows = []
    for i in range(8):
        good = i % 2 == 0
        turns = [("what is the sentiment of the review ?", "please tell me the review"),
                 (f"the movie was {'great' if good else 'awful'}", "positive" if good else "negative")]
        if i % 4 < 2:
            rows.append({"messages": [{"role": "system", "content": "answer the question"}]
                         + [{"role": role, "content": text} for user, answer in turns
                            for role, text in (("user", user), ("assistant", answer))]})
        else:
            rows.append({"conversations": [{"from": speaker, "value": text} for user, answer in turns
                                           for speaker, text in (("human", user), ("gpt", answer))]})
    path = tmp_path_factory.mktemp("chat-data") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_examples_learn_every_assistant_turn_only(chat_model, chat_rows, tmp_path):
    from asft.modeling import load_tokenizer

    tokenizer = load_tokenizer(chat_model, padding_side="right")
    config = TrainConfig(model=str(chat_model), data=str(chat_rows), out=str(tmp_path / "o"), method="sft",
                         system_prompt="be brief")
    examples, template, _ = read_examples(config, tokenizer)
    assert template == "chat" and len(examples) == 8
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for example in examples:
        answers = [t for t in example["labels"] if t != IGNORE_INDEX]
        assert answers.count(end) == 2 and tokenizer.eos_token_id not in example["input_ids"]
        assert tokenizer.decode(answers, skip_special_tokens=True).split() == \
            ["please", "tell", "me", "the", "review", "positive" if "great" in tokenizer.decode(example["input_ids"])
             else "negative"]
    # a ShareGPT row without a system prompt gets the configured one; a chat row keeps its own
    assert "be brief" not in tokenizer.decode(examples[0]["input_ids"])
    assert examples[2] == encode_example(tokenizer, Record("the movie was great", output="positive", history=(
        ("what is the sentiment of the review ?", "please tell me the review"),)), "chat", 512, system_prompt="be brief")


def test_cli_trains_on_multi_turn_chat_data(chat_model, chat_rows, tmp_path):
    out = tmp_path / "adapter"
    done = run_cli("train", "--model", str(chat_model), "--data", str(chat_rows), "--out", str(out), "--method", "sft",
                   "--preset", "sandbox", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["template"] == "chat" and manifest["examples"] == 8 and manifest["steps"] == 2
    assert manifest["config"]["template"] == "auto"


def test_cli_chat_template_without_one_is_a_one_line_error(llama_pair, chat_rows, tmp_path):
    done = run_cli("train", "--model", str(llama_pair[0]), "--data", str(chat_rows), "--out", str(tmp_path / "x"),
                   "--method", "sft", "--template", "chat", "--device", "cpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "has no chat template; use --template auto" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
