"""Batched greedy generation, and loading a model (with an optional PEFT adapter) for it.

Prompts are sorted by token length so each batch pads little, left-padded so every row's
new tokens start at the same column, and put back in the caller's order at the end.
Decoding is plain greedy: the checkpoint's own ``generation_config`` (temperature,
repetition penalty, minimum length, ...) is set aside during the call, because those
settings would silently change the measurement from one checkpoint to the next.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from asft.errors import AsftError
from asft.storage import materialize


def load_model(model_uri: str | os.PathLike, adapter_uri: str | os.PathLike | None = None, *,
               dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer) ready for :func:`generate`; the adapter, if any, is applied on top."""
    from asft.modeling import load_causal_lm, load_tokenizer, pick_device

    dev = pick_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    model = load_causal_lm(model_uri, dtype=dtype, device=str(dev), trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_uri, trust_remote_code=trust_remote_code, padding_side="left")
    if adapter_uri is not None:
        model = apply_adapter(model, adapter_uri)
    return model, tokenizer


def apply_adapter(model, adapter_uri: str | os.PathLike):
    """``PeftModel.from_pretrained`` on a local or remote adapter folder, safetensors only."""
    from peft import PeftModel

    folder = materialize(adapter_uri)
    if not (folder / "adapter_config.json").exists():
        raise AsftError(f"adapter {adapter_uri}: no adapter_config.json; give a PEFT adapter folder (save_pretrained)")
    if not (folder / "adapter_model.safetensors").exists():
        raise AsftError(f"adapter {adapter_uri}: no adapter_model.safetensors (pickle adapters are never loaded); "
                        "save it with safe_serialization=True")
    return PeftModel.from_pretrained(model, str(folder), is_trainable=False).eval()


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus any end-of-turn ids the checkpoint's generation config lists."""
    from transformers import GenerationMixin

    owner = next(m for m in model.modules() if isinstance(m, GenerationMixin))
    listed = owner.generation_config.eos_token_id
    listed = [] if listed is None else [listed] if isinstance(listed, int) else list(listed)
    return list(dict.fromkeys([tokenizer.eos_token_id, *listed]))


@contextmanager
def _plain_generation_config(model, tokenizer, max_new_tokens: int) -> Iterator[object]:
    """A fresh greedy GenerationConfig, with the checkpoint's own one set aside meanwhile
    (``generate`` fills unset fields from it, e.g. a repetition penalty)."""
    from transformers import GenerationConfig, GenerationMixin

    owner = next(m for m in model.modules() if isinstance(m, GenerationMixin))
    eos = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    saved = owner.generation_config
    owner.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=pad)
    try:
        yield GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                               eos_token_id=eos, pad_token_id=pad)
    finally:
        owner.generation_config = saved


@torch.no_grad()
def generate_tokens(model, tokenizer, prompts: list[str], *, batch_size: int = 32, max_new_tokens: int = 64,
                    add_special_tokens: bool = True, progress: bool = True) -> list[list[int]]:
    """The new token ids for each prompt (greedy), cut after the first EOS (EOS not included).

    ``add_special_tokens=False`` for prompts that already hold them (chat templates add BOS).
    """
    from asft.progress import progress_bar

    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    if tokenizer.eos_token_id is None:
        raise AsftError("tokenizer has no EOS token; generation could not stop")
    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    device = next(model.parameters()).device
    results: list[list[int]] = [[] for _ in prompts]
    with _plain_generation_config(model, tokenizer, max_new_tokens) as config:
        pad, stops = config.pad_token_id, set(config.eos_token_id)
        bar = progress_bar(-(-len(order) // batch_size), "generate", unit="batches", enabled=progress)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding: the prompt ends at the last column
                n = len(encoded[i])
                ids[r, width - n:] = torch.tensor(encoded[i])
                mask[r, width - n:] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            for r, i in enumerate(rows):
                new = out[r, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in stops), len(new))
                results[i] = new[:end]
            bar.update(1)
    bar.close()
    return results


def decode(tokenizer, token_ids: list[list[int]]) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in token_ids]


def generate(model, tokenizer, prompts: list[str], *, batch_size: int = 32, max_new_tokens: int = 64,
             add_special_tokens: bool = True, progress: bool = True) -> list[str]:
    """Greedy answers (new text only, special tokens skipped, stripped), in prompt order."""
    return decode(tokenizer, generate_tokens(model, tokenizer, prompts, batch_size=batch_size,
                                             max_new_tokens=max_new_tokens,
                                             add_special_tokens=add_special_tokens, progress=progress))
