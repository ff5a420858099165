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
import time
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


ENGINE_SHAPES = {"tiny": dict(prompts=4, new_tokens=4, batch=4), "full": dict(prompts=256, new_tokens=128, batch=256)}


def engines(model: str, mode: str, device: torch.device) -> dict:
    """``vllm_over_hf_generation``: new tokens per second of the evaluator's two engines
    (``EvalConfig.engine`` hf and vllm: the same prompt ids, greedy, the same stop tokens) on
    one checkpoint, model loading left out; and how many answers the engines agree on.
    Without vllm (or a GPU) the vLLM arm records the evaluator's own error line."""
    from asft.errors import AsftError
    from asft.evaluation import EvalConfig
    from asft.evaluation.evaluate import hf_answers
    from asft.templates import Record

    s = ENGINE_SHAPES[mode]
    words = "how do I bake bread paint a window fix a bike write a poem about the sea".split()
    records = [Record(" ".join(words[(i + k) % len(words)] for k in range(4 + i % 9)) + "?", "")
               for i in range(s["prompts"])]
    with tempfile.TemporaryDirectory(prefix="asft-bench-engines-") as tmp:
        config = EvalConfig(model=model, harmful="unused", out=tmp, template="alpaca", system_prompt="",
                            max_new_tokens=s["new_tokens"], batch_size=s["batch"], device=str(device.type),
                            progress=False)
        rates, answers, error = {}, {}, None

        def measure(name: str, engine) -> None:
            start = time.perf_counter()
            answers[name], _, tokens, _, load_s = engine(config.model_copy(update={"engine": name}), records,
                                                         lambda: None)
            rates[name] = tokens / (time.perf_counter() - start - load_s)

        measure("hf", hf_answers)
        try:
            from asft.evaluation.vllm_backend import check_vllm, vllm_answers

            check_vllm(config.device)
            measure("vllm", vllm_answers)
        except AsftError as exc:
            error = str(exc)
    details = dict(tokens_per_s={k: round(v, 1) for k, v in rates.items()}, vllm_error=error,
                   answers_identical=sum(a == b for a, b in zip(answers["hf"], answers["vllm"])) if error is None else None,
                   prompts=s["prompts"], max_new_tokens=s["new_tokens"], batch_size=s["batch"], model=model,
                   device=str(device))
    if error is not None:
        return {"name": "vllm_over_hf_generation", "ratio": None, "target": None, "met": None, **details}
    return result("vllm_over_hf_generation", rates["vllm"] / rates["hf"], None, None, **details)


if __name__ == "__main__":  # python -m benchmarks.generation engines MODEL [--tiny] [--device cuda] [--out FILE]
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation")
    parser.add_argument("what", choices=["engines"])
    parser.add_argument("model", help="a checkpoint folder")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    record = engines(args.model, "tiny" if args.tiny else "full", torch.device(args.device))
    text = json.dumps(record)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
