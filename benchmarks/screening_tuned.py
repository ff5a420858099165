"""``python -m benchmarks.screening_tuned [--epochs 3] [--quick]``: the candidate screener that is
not the default yet, measured the way the default is.

A LoRA-tuned all-MiniLM-L6-v2 with a linear head on its mean-pooled embedding, trained on our
own labelled set (``asft/data/screening/head_data``: 689 benign, 365 harmful requests), 80 % for
training and 20 % held out to set the threshold at 3 % FPR; then judged on the asft-bench
files (ASFT_BENCH_DATA) and the held-out files, beside the default zero-shot screener's
figures from ``benchmarks.screening``. Takes ~20 min on two loaded CPU cores (``--quick``: one
epoch on 200 rows, to check it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks.screening import HOLDOUT_FILES, TRAINING_FILES, load, load_holdout

HEAD_DATA = Path(__file__).resolve().parents[1] / "asft" / "data" / "screening" / "head_data"


def labelled() -> tuple[list[str], np.ndarray]:
    rows = {name: [json.loads(line) for line in (HEAD_DATA / f"{name}.jsonl").read_text().splitlines()]
            for name in ("benign", "harmful")}
    texts = ["\n\n".join(p for p in (r["instruction"], r["input"]) if p) for r in rows["benign"] + rows["harmful"]]
    return texts, np.array([False] * len(rows["benign"]) + [True] * len(rows["harmful"]))


class TunedScreener:
    """MiniLM + LoRA (query, value, dense) + a linear head; a logit per text."""

    def __init__(self, seed: int, max_tokens: int = 64):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel, AutoTokenizer

        from asft.data.screening.encoder import BUNDLED_MODEL, resolve_model

        torch.manual_seed(seed)
        path = resolve_model(BUNDLED_MODEL)
        self.tokenizer, self.max_tokens = AutoTokenizer.from_pretrained(path), max_tokens
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value", "dense"], lora_dropout=0.1)
        self.model = get_peft_model(AutoModel.from_pretrained(path, use_safetensors=True), config)
        self.head = torch.nn.Linear(self.model.config.hidden_size, 1)

    def logits(self, texts: list[str]):
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return self.head(pooled * 10).squeeze(-1)

    def fit(self, texts: list[str], harmful: np.ndarray, epochs: int, seed: int, batch_size: int = 32) -> None:
        import torch

        from asft.progress import progress_bar

        params = [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        pos_weight = torch.tensor((~harmful).sum() / harmful.sum(), dtype=torch.float32)
        rng, steps = np.random.default_rng(seed), -(-len(texts) // batch_size)
        bar = progress_bar(epochs * steps, "tune screener", unit="steps")
        self.model.train()
        for _ in range(epochs):
            order = rng.permutation(len(texts))
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                target = torch.tensor(harmful[rows], dtype=torch.float32)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    self.logits([texts[i] for i in rows]), target, pos_weight=pos_weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(1)
        bar.close()
        self.model.eval()

    def score(self, texts: list[str]) -> np.ndarray:
        import torch

        order, out = np.argsort([len(t) for t in texts]), np.empty(len(texts))
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                rows = order[start:start + 64]
                out[rows] = self.logits([texts[i] for i in rows]).numpy()
        return out


def run(epochs: int, quick: bool, seed: int = 0) -> dict:
    from asft.data.report import quality
    from asft.data.screening.base import request_text
    from asft.data.screening.calibration import operating_point, threshold_for_fpr

    texts, harmful = labelled()
    order = np.random.default_rng(seed).permutation(len(texts))
    if quick:
        order = order[:200]
    held, fit = order[:len(order) // 5], order[len(order) // 5:]
    screener = TunedScreener(seed)
    screener.fit([texts[i] for i in fit], harmful[fit], epochs, seed)
    scores = screener.score([texts[i] for i in held])
    threshold = threshold_for_fpr(scores[~harmful[held]], 0.03)
    result = {"operating_point": operating_point(threshold, scores[~harmful[held]], scores[harmful[held]], 0.03,
                                                 f"20 % of head_data ({len(held)} rows)"), "files": {}}
    env = os.environ.get("ASFT_BENCH_DATA")
    sets = [(n, *load(Path(env), n)) for n in TRAINING_FILES] if env and Path(env).is_dir() else []
    sets += [(f"holdout/{n}", *load_holdout(n)) for n in HOLDOUT_FILES]
    for name, records, truth in sets:
        if quick:
            records, truth = records[:100], truth[:100]
        flagged = screener.score([request_text(r) for r in records]) > threshold
        q = quality(truth, flagged.tolist())
        result["files"][name] = {k: q[k] for k in ("recall", "false_positive_rate", "precision")} | {"rows": len(records)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.screening_tuned", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one epoch on 200 rows, 100 rows per file: it runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(1 if args.quick else args.epochs, args.quick)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"operating point: {json.dumps(result['operating_point'])}")
    fmt = lambda v: f"{v:7.3f}" if isinstance(v, float) else f"{'-':>7}"  # noqa: E731
    for name, m in result["files"].items():
        print(f"{name:18} rows {m['rows']:5d} recall {fmt(m['recall'])} FPR {fmt(m['false_positive_rate'])} precision {fmt(m['precision'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
