"""Batched greedy generation, and loading a model (with an optional PEFT adapter) for it.

Prompts are sorted by token length so each batch pads little, left-padded so every row's
new tokens start at the same column, and put back in the caller's order at the end.
Decoding is plain greedy: the checkpoint's own ``generation_config`` (temperature,
repetition penalty, minimum length, ...) is set aside during the call, because those
settings would silently change the measurement from one checkpoint to the next.
"""

from __future__ import annotations

import gc
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import torch

from asft import storage
from asft.errors import AsftError, first_line
from asft.templates import Record, TemplateName, end_of_turn_ids, prompt_ids

_CHARS_PER_TOKEN = 16  # generous: a token rarely spans more characters, so a cut by characters keeps enough


def load_model(model_uri: str | os.PathLike, adapter_uri: str | os.PathLike | None = None, *,
               dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
               allow_other_base: bool = False):
    """(model, tokenizer) ready for :func:`generate`; the adapter, if any, is applied on top
    (after :func:`check_adapter_base`, before the model is loaded)."""
    from asft.modeling import load_causal_lm, load_tokenizer, pick_device

    if adapter_uri is not None:
        check_adapter_base(adapter_uri, model_uri, allow_other_base)
    dev = pick_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    model = load_causal_lm(model_uri, dtype=dtype, device=str(dev), trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_uri, trust_remote_code=trust_remote_code, padding_side="left")
    if adapter_uri is not None:
        model = apply_adapter(model, adapter_uri)
    return model, tokenizer


def check_adapter_base(adapter_uri: str | os.PathLike, model_uri: str | os.PathLike, allow_other_base: bool = False) -> None:
    """Refuse an adapter whose ``train_manifest.json`` names other base weights than ``model_uri``'s:
    with the same shapes it would load silently and measure a model nobody trained.
    ``allow_other_base`` makes it a warning. Adapters made outside asft carry no such record."""
    from asft.io.hashing import remembered_checkpoint_sha256
    from asft.modeling import resolve_checkpoint
    from asft.training.trainer import MANIFEST

    manifest_uri = storage.join(adapter_uri, MANIFEST)
    manifest = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else {}
    trained_on = manifest.get("model_sha256") if isinstance(manifest, dict) else None
    if not trained_on:
        return
    actual = remembered_checkpoint_sha256(resolve_checkpoint(model_uri))
    if actual == trained_on:
        return
    mismatch = (f"adapter {adapter_uri} was trained on a model with sha256 {trained_on[:12]}..., "
                f"not {model_uri} ({actual[:12]}...)")
    if not allow_other_base:
        raise AsftError(f"{mismatch}; use the model it was trained on, or pass --allow-other-base to apply it anyway")
    print(f"asft: warning: {mismatch}; applying it anyway (--allow-other-base)", file=sys.stderr)


def adapter_folder(adapter_uri: str | os.PathLike):
    """The local folder of a PEFT adapter, checked: its config and a readable safetensors file
    (pickle adapters are never loaded)."""
    from asft.io.safetensors import safetensors_header

    folder = storage.materialize(adapter_uri)
    if not (folder / "adapter_config.json").exists():
        raise AsftError(f"adapter {adapter_uri}: no adapter_config.json; give a PEFT adapter folder (save_pretrained)")
    if not (folder / "adapter_model.safetensors").exists():
        raise AsftError(f"adapter {adapter_uri}: no adapter_model.safetensors (pickle adapters are never loaded); "
                        "save it with safe_serialization=True")
    safetensors_header(folder / "adapter_model.safetensors")  # a cut file fails with its name
    return folder


def apply_adapter(model, adapter_uri: str | os.PathLike):
    """``PeftModel.from_pretrained`` on a local or remote adapter folder, safetensors only."""
    from peft import PeftModel
    from safetensors import SafetensorError

    folder = adapter_folder(adapter_uri)
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=False).eval()
    except (RuntimeError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        # size mismatch (another hidden size), target modules the model lacks, a corrupt config
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
                      first_line(exc))
        raise AsftError(f"adapter {adapter_uri} does not fit the model ({type(exc).__name__}: {detail}); "
                        "use an adapter trained on this model") from None


def stop_token_ids(tokenizer, generation_config) -> list[int]:
    """The tokenizer's EOS, its chat template's end-of-turn token and any end-of-turn ids the
    checkpoint's generation config (``None``: it has none) lists."""
    listed = getattr(generation_config, "eos_token_id", None)
    listed = [] if listed is None else [listed] if isinstance(listed, int) else list(listed)
    return list(dict.fromkeys([tokenizer.eos_token_id, *end_of_turn_ids(tokenizer), *listed]))


@contextmanager
def _plain_generation_config(model, tokenizer, max_new_tokens: int) -> Iterator[object]:
    """A fresh greedy GenerationConfig, with the checkpoint's own one set aside meanwhile
    (``generate`` fills unset fields from it, e.g. a repetition penalty)."""
    from transformers import GenerationConfig, GenerationMixin

    owner = next(m for m in model.modules() if isinstance(m, GenerationMixin))
    eos = stop_token_ids(tokenizer, owner.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    saved = owner.generation_config
    owner.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=pad)
    try:
        yield GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                               eos_token_id=eos, pad_token_id=pad)
    finally:
        owner.generation_config = saved


def context_length(model_config, tokenizer) -> int | None:
    """Tokens the model takes in all (prompt + answer): the smaller of its config's
    ``max_position_embeddings`` and the tokenizer's ``model_max_length``, where known."""
    from transformers.tokenization_utils_base import LARGE_INTEGER

    known = (getattr(model_config, "max_position_embeddings", None), tokenizer.model_max_length)
    return min((n for n in known if isinstance(n, int) and 0 < n < LARGE_INTEGER), default=None)


def _middle_cut(items, head: int, tail: int):
    return items if len(items) <= head + tail else items[:head] + items[len(items) - tail:]


def _prompt_budget(model_config, tokenizer, max_new_tokens: int) -> int | None:
    """Tokens a prompt may take so ``max_new_tokens`` still fit the context (None: no known limit)."""
    context = context_length(model_config, tokenizer)
    if context is None:
        return None
    if context - max_new_tokens < 1:
        raise AsftError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt: the model takes "
                        f"{context} tokens in all; use at most {context - 1}")
    return context - max_new_tokens


def _fit(encode, items: list, budget: int | None) -> tuple[list[list[int]], list[int]]:
    """``encode(item, keep)`` for each item, then any prompt over ``budget`` tokens cut in
    the middle: the first quarter of the budget (BOS, the template's preamble, the start of the
    request) and the last three quarters (the end of the request and the answer cue) are kept,
    so the model still sees a well-formed prompt that asks for an answer. ``encode`` first cuts
    texts to the ``keep`` = (head, tail) characters, so a 10 MB prompt is never tokenized whole;
    it returns the ids and whether it cut."""
    if budget is None:
        return [encode(item, None)[0] for item in items], []
    head, tail = budget // 4, budget - budget // 4
    encoded, cut = [], []
    for i, item in enumerate(items):
        ids, shortened = encode(item, (head * _CHARS_PER_TOKEN, tail * _CHARS_PER_TOKEN))
        if shortened or len(ids) > budget:
            cut.append(i)
            ids = _middle_cut(ids, head, tail)
        encoded.append(ids)
    return encoded, cut


def _char_cut(text: str, keep: tuple[int, int] | None) -> str:
    return text if keep is None else _middle_cut(text, *keep)


def encode_prompts(model_config, tokenizer, prompts: list[str], *, max_new_tokens: int,
                   add_special_tokens: bool = True) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt text, cut to leave ``max_new_tokens`` of the context (of a model
    with this ``PretrainedConfig``) for the answer (:func:`_fit`), and the indices of the
    prompts that were cut."""
    def encode(prompt: str, keep: tuple[int, int] | None) -> tuple[list[int], bool]:
        text = _char_cut(prompt, keep)
        return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"], len(text) < len(prompt)

    return _fit(encode, prompts, _prompt_budget(model_config, tokenizer, max_new_tokens))


def encode_records(model_config, tokenizer, records: list[Record], *, template: TemplateName, system_prompt: str,
                   max_new_tokens: int) -> tuple[list[list[int]], list[int]]:
    """:func:`encode_prompts` for conversations: the prompt ids training uses
    (:func:`asft.templates.prompt_ids`), each text of a conversation cut by characters first."""
    def encode(record: Record, keep: tuple[int, int] | None) -> tuple[list[int], bool]:
        short = replace(record, instruction=_char_cut(record.instruction, keep), input=_char_cut(record.input, keep),
                        history=tuple((_char_cut(u, keep), _char_cut(a, keep)) for u, a in record.history))
        return prompt_ids(tokenizer, short, template, system_prompt=system_prompt), short != record

    return _fit(encode, records, _prompt_budget(model_config, tokenizer, max_new_tokens))


def generate_tokens(model, tokenizer, prompts: list[str], *, batch_size: int = 32, max_new_tokens: int = 64,
                    add_special_tokens: bool = True, progress: bool = True) -> list[list[int]]:
    """The new token ids for each prompt (greedy), cut after the first EOS (EOS not included).
    Prompts longer than the context are cut in the middle (:func:`encode_prompts`).

    ``add_special_tokens=False`` for prompts that already hold them (chat templates add BOS).
    """
    encoded, _ = encode_prompts(model.config, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                add_special_tokens=add_special_tokens)
    return generate_from_ids(model, tokenizer, encoded, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             progress=progress)


@torch.no_grad()
def generate_from_ids(model, tokenizer, encoded: list[list[int]], *, batch_size: int = 32, max_new_tokens: int = 64,
                      progress: bool = True) -> list[list[int]]:
    """:func:`generate_tokens` on prompts already encoded (by :func:`encode_prompts`)."""
    from asft.progress import progress_bar

    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    if tokenizer.eos_token_id is None:
        raise AsftError("tokenizer has no EOS token; generation could not stop")
    if not encoded:
        return []
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    device = next(model.parameters()).device
    results: list[list[int]] = [[] for _ in encoded]
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


def free_accelerator_memory() -> None:
    """Give a dropped model's memory back (the next model, e.g. a judge, may need it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def decode(tokenizer, token_ids: list[list[int]]) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in token_ids]


def generate(model, tokenizer, prompts: list[str], *, batch_size: int = 32, max_new_tokens: int = 64,
             add_special_tokens: bool = True, progress: bool = True) -> list[str]:
    """Greedy answers (new text only, special tokens skipped, stripped), in prompt order."""
    return decode(tokenizer, generate_tokens(model, tokenizer, prompts, batch_size=batch_size,
                                             max_new_tokens=max_new_tokens,
                                             add_special_tokens=add_special_tokens, progress=progress))
