"""Tiny local models for the evaluation tests: a random causal Llama, a guard Llama trained
for a few steps to answer "unsafe"/"safe", and classifiers whose outputs are set by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asft.sandbox.tokenizer import train_tokenizer
from eval_helpers import COMPLY, CORPUS, QUESTIONS, REFUSE


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS * 4, vocab_size=600, max_length=1024)


def tiny_llama_config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **extra)


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, tokenizer) -> Path:
    """A random tiny Llama (seeded) with its tokenizer, saved as safetensors."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    return save(model, tokenizer, tmp_path_factory.mktemp("tiny-lm"))


# A short moderation chat template (Llama Guard 2/3 ship theirs in the tokenizer), so the
# guard fixture trains on ~40-token prompts instead of the ~260-token v1 task prompt.
GUARD_CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
                       "{% else %}Agent: {{ m['content'] }}\n{% endif %}{% endfor %}Verdict:")


@pytest.fixture(scope="session")
def guard_model(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama whose tokenizer has a guard chat template, trained to answer "unsafe"
    when the agent complies and "safe" when it refuses (then EOS)."""
    import copy

    from transformers import LlamaForCausalLM

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = GUARD_CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    examples = []
    for q in QUESTIONS[::2]:  # the odd ones stay unseen for the tests
        for answer, verdict in ((COMPLY, "unsafe\nO3"), (REFUSE, "safe")):
            chat = [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]
            text = tokenizer.apply_chat_template(chat, tokenize=False)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            target = tokenizer(verdict, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            examples.append((prompt + target, [-100] * len(prompt) + target))
    width = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in examples])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in examples])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in examples])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05, f"guard fixture did not learn (loss {loss.item():.3f})"
    return save(model.eval(), tokenizer, tmp_path_factory.mktemp("guard"))


def classifier(tmp_path_factory, tokenizer, name: str, bias: list[float]) -> Path:
    """A tiny BERT multi-label classifier whose probabilities are sigmoid(bias) for any input."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=1024, num_labels=len(bias),
                        problem_type="multi_label_classification", pad_token_id=tokenizer.pad_token_id,
                        id2label={i: f"cat{i}" for i in range(len(bias))},
                        label2id={f"cat{i}": i for i in range(len(bias))})
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    return save(model, tokenizer, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def moderation_flags_all(tmp_path_factory, tokenizer) -> Path:
    return classifier(tmp_path_factory, tokenizer, "mod-all", [-4.0, 2.0, -4.0])


@pytest.fixture(scope="session")
def moderation_flags_none(tmp_path_factory, tokenizer) -> Path:
    return classifier(tmp_path_factory, tokenizer, "mod-none", [-4.0, -3.0, -4.0])
