"""``batched_over_sequential_generation``: tokens/s of batched greedy generation
(``asft.evaluation.generation.generate_tokens``, the token-level core of ``generate``) with
batch size N vs 1, on the same prompts (held-out harmful prompts of the sandbox, alpaca
template). Only the new tokens up to EOS count.

Model: a sandbox folder given with ``--sandbox`` (its ``aligned`` model), else one built here
(quick: tiny, full: default); tiny mode uses a random tiny Llama with a locally trained
tokenizer (no build), enough to keep the code path honest.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.timing import interleaved, median, result

SHAPES = {"tiny": dict(prompts=4, batch=4, new_tokens=4, repeats=1, warmup=0, size=None),
          "quick": dict(prompts=32, batch=32, new_tokens=32, repeats=3, warmup=1, size="tiny"),
          "full": dict(prompts=64, batch=64, new_tokens=64, repeats=3, warmup=1, size="default"),
          # GPU: one sequential pass is ~prompts x new_tokens decoder steps of ~15 ms; keep it inside the time box
          "full-cuda": dict(prompts=32, batch=32, new_tokens=32, repeats=2, warmup=1, size="default")}


def _random_model(folder: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from asft.sandbox.tokenizer import train_tokenizer

    texts = ["How do I bake bread at home?", "Tell me how to pick a lock.", "The film was wonderful."] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300, max_length=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=256,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return texts[:3]


def run(mode: str, device: torch.device, sandbox: str | None = None) -> dict:
    from asft.evaluation.generation import generate_tokens, load_model
    from asft.rows import read_rows
    from asft.templates import Record, render_prompt

    s = SHAPES["full-cuda" if mode == "full" and device.type == "cuda" else mode]
    with tempfile.TemporaryDirectory(prefix="asft-bench-gen-") as tmp:
        if mode == "tiny" and sandbox is None:
            folder, instructions, source = Path(tmp) / "model", _random_model(Path(tmp) / "model"), "random tiny Llama"
        else:
            if sandbox is None:
                from asft.sandbox import SandboxConfig, build_sandbox

                sandbox = str(Path(tmp) / "sandbox")
                build_sandbox(SandboxConfig(size=s["size"], device=str(device)), sandbox)
            folder = Path(sandbox) / "aligned"
            instructions = [r["instruction"] for r in read_rows(str(Path(sandbox) / "data/eval/harmful.jsonl"),
                                                                 required=("instruction",))]
            source = f"sandbox {sandbox} (aligned)"
        prompts = [render_prompt(Record(instructions[i % len(instructions)], "", ""), "alpaca")
                   for i in range(s["prompts"])]
        model, tokenizer = load_model(folder, device=str(device))
        tokens: dict[str, int] = {}

        def arm(batch_size: int, name: str):
            def call() -> None:
                out = generate_tokens(model, tokenizer, prompts, batch_size=batch_size,
                                      max_new_tokens=s["new_tokens"], progress=False)
                tokens[name] = sum(len(ids) for ids in out)
            return call

        seconds = interleaved({"batched": arm(s["batch"], "batched"), "sequential": arm(1, "sequential")},
                              s["repeats"], s["warmup"], device)
        params = sum(p.numel() for p in model.parameters())
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    rates = {k: tokens[k] / median(v) for k, v in seconds.items()}
    ratio = rates["batched"] / rates["sequential"]
    target = 8 if device.type == "cuda" else 4
    return result(
        "batched_over_sequential_generation", ratio, f">= {target}", ratio >= target,
        tokens_per_s={k: round(v, 1) for k, v in rates.items()}, new_tokens=tokens,
        seconds={k: [round(x, 4) for x in v] for k, v in seconds.items()},
        shapes={"prompts": s["prompts"], "batch_size": s["batch"], "max_new_tokens": s["new_tokens"],
                "model_params": params},
        model=source, dtype=dtype, device=str(device), repeats=s["repeats"], warmup=s["warmup"],
        order="interleaved batched, sequential")
