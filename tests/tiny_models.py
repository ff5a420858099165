"""Tiny real checkpoints for tests: a word-level tokenizer, a small Llama config, and a saved
base/aligned pair (the aligned one with every weight perturbed)."""

from __future__ import annotations

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
