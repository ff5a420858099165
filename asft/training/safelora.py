"""Safe LoRA (Hsu et al. 2024), post-hoc: pull the least aligned LoRA updates back onto the
alignment direction.

Per module, with C = V V^T / ||V||_F: s = cos(vec(C B A), vec(B A)); where s <= tau, B is
replaced by C B. In ``number`` mode tau is the K-th smallest s, computed on the UNMODIFIED
adapter (the original code computes it while modules are already being replaced).
Cosines use the same (r, r) trick as the penalty, so no (out, in) update is formed.

V and the update B A are both in (out, in) layout (peft's B A is, for Conv1D modules too).
With ``row_blocks`` (fused q/k/v anchored on q and v), C is the training's block anchor: C B
acts on the q rows and on the v rows with their own C, and keeps the k rows as trained.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from asft.errors import AsftError
from asft.regularizer import Anchor, build_anchors

PEFT_PREFIX = "base_model.model."


def lora_modules(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Module name -> (lora_A key, lora_B key) in a saved PEFT adapter state dict."""
    pairs = {}
    for key in state:
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            b_key = module + ".lora_B.weight"
            if b_key not in state:
                raise AsftError(f"adapter has {key} but no {b_key}; the adapter file is incomplete")
            name = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
            pairs[name] = (key, b_key)
    return pairs


def cosine(A: torch.Tensor, B: torch.Tensor, anchor: Anchor) -> float:
    """cos(vec(C B A), vec(B A)) in float64 (``anchor`` built from float64 V); 1.0 for a zero
    update (nothing to pull back)."""
    A, B = A.double(), B.double()
    Y = anchor.apply(B)
    gram_A = A @ A.T
    inner = ((Y.T @ B) * gram_A).sum()
    norms = math.sqrt(((Y.T @ Y) * gram_A).sum().item() * ((B.T @ B) * gram_A).sum().item())
    return 1.0 if norms == 0.0 else inner.item() / norms


def project(state: dict[str, torch.Tensor], vectors: dict[str, torch.Tensor], *,
            mode: Literal["threshold", "number"] = "threshold", tau: float = 0.5, k: int = 10,
            row_blocks: dict[str, list[torch.Tensor]] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(projected adapter state, report). ``vectors``: V per module name (float32 or wider);
    ``row_blocks``: modules anchored per block of rows, as in training."""
    pairs = lora_modules(state)
    if not pairs:
        raise AsftError("adapter has no lora_A/lora_B weights; give a PEFT LoRA adapter")
    missing = [name for name in pairs if name not in vectors]
    if missing:
        raise AsftError(f"direction has no module {missing[0]} ({len(missing)} adapter modules missing); "
                        "extract the direction for the adapter's target modules")
    for name, (a, b) in pairs.items():
        update = (state[b].shape[0], state[a].shape[1])
        if update != tuple(vectors[name].shape):
            raise AsftError(f"adapter module {name} updates a {list(update)} weight but the direction's V is "
                            f"{list(vectors[name].shape)}; use a direction extracted from the adapter's base model")
    anchors = build_anchors({name: vectors[name].double() for name in pairs}, "fro", row_blocks=row_blocks)
    cosines = {name: cosine(state[a], state[b], anchors[name]) for name, (a, b) in pairs.items()}
    threshold = tau if mode == "threshold" else sorted(cosines.values())[min(k, len(cosines)) - 1]
    projected = sorted(name for name, s in cosines.items() if s <= threshold)
    new_state = dict(state)
    for name in projected:
        b_key = pairs[name][1]
        B = state[b_key]
        new_state[b_key] = anchors[name].apply(B.double()).to(B.dtype)
    report = {"mode": mode, "threshold": threshold, "tau": tau, "k": k if mode == "number" else None,
              "cosines": cosines, "projected": projected, "modules": len(pairs)}
    return new_state, report
