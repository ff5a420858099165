"""The model about to be fine-tuned, as a screener: its refusal direction.

An aligned model already knows which requests it refuses. In its residual stream one direction
separates them from the requests it answers (Arditi et al., 2024, "Refusal in language models is
mediated by a single direction"): the difference of the mean hidden states, at the last prompt
token, over labelled harmful and benign requests. A request scores its projection on that
direction. The requests are rendered in the template training uses, so the probe reads what the
model will read; no weights beyond the model being trained, and it runs where training runs.

The labelled requests (``examples``; default: the requests of ``head_data``) are split three ways:
the direction is the difference of means on most of them, the layer is the one whose direction
separates a second share best (recall at the target FPR), and the threshold is set at the target
FPR on a held-out share that chose nothing; the report prints that operating point.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import Field

from asft.data.screening.base import ScreenResult
from asft.data.screening.calibration import operating_point, threshold_for_fpr
from asft.errors import AsftError
from asft.forms import FormModel
from asft.templates import Record, TemplateName, prompt_ids

SHARES = (0.6, 0.2, 0.2)  # direction, layer choice, threshold


class ProbeConfig(FormModel):
    """The aligned model's refusal direction as a screener."""

    model: str | None = Field(None, description="The aligned checkpoint to read (HF folder, safetensors). The pipeline "
                              "uses its aligned model when this is empty.")
    examples: str | None = Field(None, description="Labelled requests the direction is learnt from: JSONL with "
                                 "instruction, input and a boolean harmful. Empty: head_data, the labelled requests asft ships.")
    layer: int | None = Field(None, ge=1, description="Hidden layer read (1 = after the first block). Empty: the layer "
                              "whose direction separates held-out examples best.")
    template: TemplateName = Field("auto", description="Prompt template, as in training: auto is the tokenizer's chat "
                                   "template if it has one, else alpaca.")
    target_fpr: float = Field(0.03, gt=0.0, lt=1.0, description="Share of held-out benign examples the threshold flags.")
    max_tokens: int = Field(256, ge=8, le=8192, description="Prompt tokens read (the last ones: the answer cue and the end of the request).")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts per forward pass.")
    seed: int = Field(0, description="Draws the split of the examples.")


def labelled_examples(path: str | None) -> tuple[list[Record], np.ndarray]:
    """(requests, harmful) from ``path``, or head_data's when None."""
    from asft import storage

    if path is None:
        from asft.data.screening.tuned import shipped_training_set

        records, labels, _ = shipped_training_set()
        return records, labels
    rows = [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if not isinstance(r.get("harmful"), bool) or "instruction" not in r), None)
    if bad is not None:
        raise AsftError(f"probe examples {path}: line {bad + 1} needs an instruction and a boolean harmful")
    labels = np.array([r["harmful"] for r in rows])
    if min(labels.sum(), (~labels).sum()) < 10:
        raise AsftError(f"probe examples {path}: needs at least 10 harmful and 10 benign requests "
                        f"(has {int(labels.sum())} and {int((~labels).sum())})")
    return [Record(r["instruction"], r.get("input", "")) for r in rows], labels


class ProbeScreener:
    """Flags a record when one of its user turns, as a prompt to the aligned model, lies far
    enough along the model's refusal direction."""

    name = "probe"

    def __init__(self, config: ProbeConfig, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        from asft.modeling import load_causal_lm, load_tokenizer, pick_device

        if not config.model:
            raise AsftError("the probe screener needs the aligned model: probe.model=PATH")
        self.config = config
        dtype = ("bfloat16" if pick_device(device).type == "cuda" else "float32") if dtype == "auto" else dtype
        self.tokenizer = load_tokenizer(config.model, trust_remote_code=trust_remote_code, padding_side="left")
        self.model = load_causal_lm(config.model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.fitted = self._fit(*labelled_examples(config.examples))

    def states(self, records: list[Record], layer: int | None = None) -> np.ndarray:
        """Hidden states at the last prompt token: (rows, layers + 1, hidden), or (rows, hidden)
        at ``layer``."""
        import torch

        prompts = [prompt_ids(self.tokenizer, r, self.config.template)[-self.config.max_tokens:] for r in records]
        order = np.argsort([len(p) for p in prompts], kind="stable")  # batches of like length pad little
        out = None
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                rows = order[start:start + self.config.batch_size]
                width = max(len(prompts[i]) for i in rows)
                pad = self.tokenizer.pad_token_id
                ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in rows])
                mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
                hidden = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                    output_hidden_states=True).hidden_states
                picked = hidden[layer][:, -1, :] if layer is not None else torch.stack([h[:, -1, :] for h in hidden], dim=1)
                last = picked.float().cpu().numpy()
                out = np.empty((len(records), *last.shape[1:]), dtype=np.float32) if out is None else out
                out[rows] = last
        return out

    def _fit(self, records: list[Record], labels: np.ndarray) -> dict[str, Any]:
        """Direction per layer on the first share, the layer on the second, the threshold on the third."""
        order = np.random.default_rng(self.config.seed).permutation(len(records))
        cuts = np.cumsum([int(len(order) * s) for s in SHARES[:2]])
        direction_rows, choice_rows, held = np.split(order, cuts)
        states = self.states(records)
        harmful, benign = states[direction_rows][labels[direction_rows]], states[direction_rows][~labels[direction_rows]]
        directions = harmful.mean(0) - benign.mean(0)
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True) + 1e-12
        midpoints = ((harmful.mean(0) + benign.mean(0)) / 2 * directions).sum(-1)

        def recall_at_target(layer: int, rows: np.ndarray) -> float:
            scores = states[rows, layer] @ directions[layer] - midpoints[layer]
            threshold = threshold_for_fpr(scores[~labels[rows]], self.config.target_fpr)
            return float((scores[labels[rows]] > threshold).mean())

        layers = range(1, states.shape[1])
        if self.config.layer is not None and self.config.layer not in layers:
            raise AsftError(f"probe.layer={self.config.layer}: {self.config.model} has layers 1-{layers[-1]}")
        layer = self.config.layer or max(layers, key=lambda k: recall_at_target(k, choice_rows))
        self.direction, self.midpoint = directions[layer], float(midpoints[layer])
        scores = states[held, layer] @ self.direction - self.midpoint
        self.threshold = threshold_for_fpr(scores[~labels[held]], self.config.target_fpr)
        self.layer = layer
        return {"layer": layer, "examples": self.config.examples or "head_data", "rows": len(records),
                "operating_point": operating_point(self.threshold, scores[~labels[held]], scores[labels[held]],
                                                   self.config.target_fpr, f"{len(held)} held-out examples")}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.config.model, "template": self.config.template,
                "input": "each user turn, as a prompt to the aligned model", **self.fitted}

    def score(self, records: list[Record]) -> list[ScreenResult]:
        turns = [[Record(user, system=record.system, history=record.history[:k]) for k, user in enumerate(record.user_turns())]
                 for record in records]
        flat = [turn for ts in turns for turn in ts]
        scores = self.states(flat, self.layer) @ self.direction - self.midpoint if flat else np.zeros(0)
        results, start = [], 0
        for ts in turns:
            worst = start + int(np.argmax(scores[start:start + len(ts)]))
            where = "request" if len(ts) == 1 else f"user turn {worst - start + 1}"
            flagged = bool(scores[worst] > self.threshold)
            verdict = "along the refusal direction" if flagged else "below the threshold"
            results.append(ScreenResult(flagged, float(scores[worst]),
                                        (f"probe:{verdict} ({where}, layer {self.layer}, s={scores[worst]:.3f})",)))
            start += len(ts)
        return results
