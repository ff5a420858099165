"""Training examples built from ingested records mask the prompt, for every template."""

from __future__ import annotations

import copy
import json

import pytest

from asft.data.ingest import ingest
from asft.templates import IGNORE_INDEX, encode_example, render_prompt
from data_helpers import write_jsonl

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize("template", ["alpaca", "llama2-chat", "chat"])
def test_prompt_tokens_are_masked(tmp_path, bpe_tokenizer, template):
    tokenizer = copy.deepcopy(bpe_tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = [{"instruction": "Classify the sentiment of the review.", "input": "a gorgeous film", "output": "positive"},
            {"messages": [{"role": "user", "content": "What is 12 times 7?"}, {"role": "assistant", "content": "84"}]}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    for row in ingest(str(path)).rows:
        example = encode_example(tokenizer, row.record, template, max_length=512)
        prompt_ids = tokenizer(render_prompt(row.record, template, tokenizer), add_special_tokens=True)["input_ids"]
        n = len(prompt_ids)
        assert example["input_ids"][:n] == prompt_ids
        assert example["labels"][:n] == [IGNORE_INDEX] * n
        assert example["labels"][n:] == example["input_ids"][n:] and example["labels"][-1] == tokenizer.eos_token_id
        answer = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX], skip_special_tokens=True)
        assert answer.strip() == row.record.output
    assert json.loads(path.read_text().splitlines()[0])["output"] == "positive"
