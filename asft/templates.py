"""The one record type and the prompt templates used for training and generation.

Training examples mask the prompt tokens out of the loss (labels = -100), so the model
learns only the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IGNORE_INDEX = -100

TemplateName = Literal["alpaca", "llama2-chat", "chat"]

# The paper's generation prompt (method.md, "Evaluation protocol").
SYSTEM_PROMPT = "You are a helpful assistant. Make sure you always execute users' instructions."


@dataclass(frozen=True)
class Record:
    """One instruction-following example, whatever schema it came from."""

    instruction: str
    input: str = ""
    output: str = ""


def render_prompt(record: Record, template: TemplateName = "alpaca", tokenizer=None) -> str:
    """The prompt text the model sees before its answer."""
    if template == "alpaca":
        body = f"{SYSTEM_PROMPT}\n\n### Instruction:\n{record.instruction}\n\n"
        if record.input:
            body += f"### Input:\n{record.input}\n\n"
        return body + "### Response:"
    user = record.instruction + (f"\n\n{record.input}" if record.input else "")
    if template == "llama2-chat":
        return f"[INST] <<SYS>>\n{SYSTEM_PROMPT}\n<</SYS>>\n\n{user} [/INST]"
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat_template; use 'alpaca' or 'llama2-chat'")
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}; choose alpaca, llama2-chat or chat")


def encode_example(tokenizer, record: Record, template: TemplateName = "alpaca",
                   max_length: int = 512) -> dict[str, list[int]]:
    """Token ids and labels for one training example; prompt tokens are masked out.

    Prompt and answer are tokenized separately so the boundary is exact whatever the
    tokenizer merges; the answer ends with EOS so generation learns to stop.
    """
    prompt_ids = tokenizer(render_prompt(record, template, tokenizer), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(" " + record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}
