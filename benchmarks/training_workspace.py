"""A throw-away training world for the training benchmarks: a random Llama saved as a
checkpoint (the "aligned" model: the base with its q/v weights moved), its direction, a BPE
tokenizer and Alpaca rows, so that ``asft train`` runs on it exactly as on a real model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

# the step benchmark's r, alpha and targets; dropout 0 so that the two trainers do the same arithmetic
SHAPES = {
    "tiny": dict(hidden=32, intermediate=64, layers=2, heads=4, vocab=300, batch=4, words=12, steps=4, repeats=2),
    "quick": dict(hidden=256, intermediate=688, layers=4, heads=4, vocab=2000, batch=8, words=48, steps=24, repeats=3),
    "full": dict(hidden=1024, intermediate=2752, layers=4, heads=8, vocab=8000, batch=8, words=160, steps=24,
                 repeats=5),
    "full-cuda": dict(hidden=2048, intermediate=5504, layers=8, heads=16, vocab=32000, batch=8, words=400,
                      steps=40, repeats=5),
}
WORDS = ("the a movie film was great awful good bad review positive negative story plot actor scene music "
         "slow fast long short funny sad dark bright old new first last").split()


def shapes_for(mode: str, device: torch.device) -> dict:
    return SHAPES["full-cuda" if mode == "full" and device.type == "cuda" else mode]


def build(root: Path, s: dict, device: torch.device) -> dict:
    """Write the world under ``root``; returns the ``TrainConfig`` fields that point at it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from asft.direction import DirectionConfig, extract_direction
    from asft.sandbox.tokenizer import train_tokenizer

    rng = random.Random(0)
    rows = [{"instruction": "what is the sentiment of this review ?",
             "input": " ".join(rng.choice(WORDS) for _ in range(s["words"])),
             "output": " ".join(rng.choice(WORDS) for _ in range(s["words"] // 4))}
            for _ in range(s["batch"] * s["steps"])]
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tokenizer = train_tokenizer((" ".join(r.values()) for r in rows), s["vocab"], 4096)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with device:  # a random init on the device: on the host it outlasts the benchmark at GPU shapes
        model = LlamaForCausalLM(config)
    model.save_pretrained(root / "base")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "v_proj.weight")):
                p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(root / "aligned")
    tokenizer.save_pretrained(root / "aligned")
    extract_direction(DirectionConfig(aligned=str(root / "aligned"), base=str(root / "base"), out=str(root / "direction")))
    return {"model": str(root / "aligned"), "data": str(data), "direction": str(root / "direction"),
            "batch_size": s["batch"], "epochs": 1, "lr": 1e-4, "lr_decay": 1.0, "lora_dropout": 0.0,
            "max_length": 4096, "device": str(device)}


def recipe_stepper(fields: dict, method: str, root: Path):
    """The recipe of ``asft train`` set up on the world, and a function that takes its step
    ``i`` exactly as the training loop does (optimizer step, metrics hook, progress)."""
    from asft.progress import progress_bar
    from asft.training import TrainConfig
    from asft.training.recipe import LoraRecipe

    recipe = LoraRecipe(TrainConfig(**fields, method=method, out=str(root / method)))
    recipe.setup()
    loop = recipe.loop()
    loop.model.train()
    bar = progress_bar(recipe.total_steps, f"bench {method}", enabled=False)
    return recipe, lambda step: loop.advance(step, recipe.total_steps, bar)


def main_for(run, prog: str):
    """A command line for one training benchmark: ``--quick | --tiny``, ``--device``, ``--json``, ``--out``;
    prints a table of its figures (or the JSON) and writes the JSON to ``--out``."""
    def main(argv: list[str] | None = None) -> int:
        import argparse
        import sys

        from asft import storage
        from asft.errors import AsftError
        from asft.modeling import pick_device
        from benchmarks.__main__ import add_size_arguments, environment

        parser = argparse.ArgumentParser(prog=prog)
        add_size_arguments(parser)
        parser.add_argument("--out", default=None, help="also write the JSON to this file")
        args = parser.parse_args(argv)
        device = pick_device(args.device)
        mode = "tiny" if args.tiny else "quick" if args.quick else "full"
        try:
            record = run(mode, device)
        except AsftError as exc:  # e.g. a 4-bit benchmark on a machine without a GPU: one line, not a traceback
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        report = {"mode": mode, "environment": environment(device), "result": record}
        text = json.dumps(report, indent=None if args.json else 2)
        if args.out:
            storage.write_text(args.out, text + "\n")
        if not args.json:
            for key, value in record.items():
                if not isinstance(value, (dict, list)):
                    print(f"{key:36} {value}")
        print(text if args.json else json.dumps({k: v for k, v in record.items() if isinstance(v, (dict, list))}))
        return 0

    return main
