"""The vLLM generation engine (``EvalConfig.engine: vllm``), an optional extra for CUDA hosts.

It answers the same prompt ids as the transformers engine (:func:`encode_records`, cut to
the same context budget), greedily, stopping at the same tokens, and decodes them the same
way; the adapter is served as a vLLM LoRA (``LoRARequest``), not merged. The checkpoint's own
``generation_config`` is set aside (``generation_config="vllm"``), as the HF engine does.
vLLM is imported only here, when the engine is chosen.
"""

from __future__ import annotations

import importlib.util
import json
from time import perf_counter
from typing import Callable

from asft.errors import AsftError
from asft.evaluation.config import EvalConfig
from asft.templates import Record, resolve_template


def check_vllm(device: str) -> None:
    """One clear line, before anything is read or loaded, when vLLM cannot run here."""
    import torch

    if device not in ("auto", "cuda"):
        raise AsftError(f"engine vllm: device {device}: vLLM runs on the GPUs CUDA_VISIBLE_DEVICES shows; "
                        "give device auto or cuda (or use engine hf)")
    if not torch.cuda.is_available():
        raise AsftError("engine vllm needs a CUDA GPU and none is visible here; use engine hf on this machine")
    if importlib.util.find_spec("vllm") is None:
        raise AsftError("engine vllm: the vllm package is not installed; pip install 'asft[vllm]' on the GPU host, "
                        "or use engine hf")


def _lora_settings(folder) -> dict:
    """vLLM's LoRA switches for an adapter folder: its rank rounded up to a size vLLM serves (8, 16, 32, ...)."""
    rank = int(json.loads((folder / "adapter_config.json").read_text())["r"])
    return {"enable_lora": True, "max_lora_rank": max(8, 1 << (rank - 1).bit_length())}


def vllm_answers(config: EvalConfig, records: list[Record],
                 on_loaded: Callable[[], None]) -> tuple[list[str], list[int], int, str, float]:
    """The vLLM engine: answers, cut prompts, new tokens, template, load seconds (the same
    contract as :func:`asft.evaluation.evaluate.hf_answers`)."""
    from transformers import AutoConfig, GenerationConfig
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from asft.evaluation.generation import (adapter_folder, check_adapter_base, context_length, decode,
                                            encode_records, free_accelerator_memory, stop_token_ids)
    from asft.modeling import load_tokenizer, resolve_checkpoint

    start = perf_counter()
    folder = resolve_checkpoint(config.model)
    tokenizer = load_tokenizer(folder, trust_remote_code=config.trust_remote_code)
    model_config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=config.trust_remote_code)
    template = resolve_template(config.template, tokenizer)
    encoded, cut = encode_records(model_config, tokenizer, records, template=template,
                                  system_prompt=config.system_prompt, max_new_tokens=config.max_new_tokens)
    lora, lora_settings = None, {}
    if config.adapter is not None:
        check_adapter_base(config.adapter, config.model, config.allow_other_base)
        adapter = adapter_folder(config.adapter)
        lora, lora_settings = LoRARequest("adapter", 1, str(adapter)), _lora_settings(adapter)
    has_generation_config = (folder / "generation_config.json").exists()
    stops = stop_token_ids(tokenizer, GenerationConfig.from_pretrained(folder) if has_generation_config else None)
    llm = LLM(model=str(folder), tokenizer=str(folder), dtype="bfloat16" if config.dtype == "auto" else config.dtype,
              trust_remote_code=config.trust_remote_code, seed=0, generation_config="vllm",
              max_model_len=context_length(model_config, tokenizer), max_num_seqs=config.batch_size, **lora_settings)
    loaded = perf_counter() - start
    on_loaded()
    params = SamplingParams(temperature=0.0, max_tokens=config.max_new_tokens, stop_token_ids=stops)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params, lora_request=lora,
                           use_tqdm=config.progress)
    token_ids = []
    for output in outputs:  # cut at the first stop token, EOS not included, as the HF engine does
        new = list(output.outputs[0].token_ids)
        token_ids.append(new[:next((k for k, t in enumerate(new) if t in stops), len(new))])
    del llm
    free_accelerator_memory()
    return decode(tokenizer, token_ids), cut, sum(len(ids) for ids in token_ids), template, loaded
