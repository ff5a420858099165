"""Tiny real checkpoints for the direction/regulariser/training tests: a random Llama base,
an "aligned" copy with perturbed weights, a sharded save, a Qwen2 pair with q/k/v biases,
and a word-level tokenizer saved next to the weights."""

from __future__ import annotations

import json

import pytest
import torch

WORDS = ("the a movie film was great awful good bad review positive negative sentiment how do i make "
         "sorry cannot help with that answer question is it ok please tell me about").split()


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    punctuation = list("#:.,!?'\"")
    vocab = {tok: i for i, tok in enumerate(specials + punctuation + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def llama_config(**overrides):
    from transformers import LlamaConfig

    fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaConfig(**{**fields, **overrides})


def save_pair(root, model, *, seed: int, scale: float = 0.05, shard: str | None = None, tokenizer=None):
    """base = model; aligned = model with every 2-D weight perturbed (biases too, to prove they are skipped)."""
    base, aligned = root / "base", root / "aligned"
    model.save_pretrained(base, max_shard_size=shard or "2GB")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    model.save_pretrained(aligned)
    if tokenizer is not None:
        tokenizer.save_pretrained(base)
        tokenizer.save_pretrained(aligned)
    return aligned, base


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory, tokenizer):
    """(aligned, base) tiny Llama folders, the base one in several shards with an index."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    aligned, base = save_pair(tmp_path_factory.mktemp("llama"), LlamaForCausalLM(llama_config()), seed=1,
                              shard="20KB", tokenizer=tokenizer)
    assert (base / "model.safetensors.index.json").exists() and (aligned / "model.safetensors").exists()
    return aligned, base


@pytest.fixture(scope="session")
def qwen_pair(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64)
    return save_pair(tmp_path_factory.mktemp("qwen"), Qwen2ForCausalLM(config), seed=2)


@pytest.fixture(scope="session")
def train_rows(tmp_path_factory):
    """A small Alpaca-style JSONL training file."""
    rows = []
    for i in range(24):
        good = i % 2 == 0
        rows.append({"instruction": "what is the sentiment of the review ?",
                     "input": f"the {'movie' if i % 3 else 'film'} was {'great' if good else 'awful'}",
                     "output": "positive" if good else "negative"})
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
