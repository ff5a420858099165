"""``direction_device_bytes``: what the direction costs on the training device, and what the
low-rank storage (``TrainConfig.direction_rank``) saves and changes.

Bytes are computed from the Llama-2-7B q/v shapes (32 layers x 2 modules x 4096x4096) and
checked against the tensors ``build_anchors`` really keeps for one module of the benchmark's
size. The penalty error of each storage is measured against the exact float32 V on random
LoRA A/B, for a random V (flat spectrum) and a V with a decaying spectrum (s_i = 1/i). V is
scaled so that C's largest eigenvalue is 1 (the anchor at full strength; real weight deltas
give a smaller C and so smaller errors); ``anchor_error`` = ||(C - C_k) B|| / ||C B|| is
scale-free.
"""

from __future__ import annotations

import torch

from asft.regularizer import build_anchors
from benchmarks.timing import result

LLAMA2_7B_QV = dict(modules=64, out=4096, inp=4096)
SHAPES = {"tiny": dict(d=64, draws=3), "quick": dict(d=1024, draws=5), "full": dict(d=4096, draws=5)}
BYTES = {"float32": 4, "bfloat16": 2}


def _rank(inp: int) -> int:
    return inp // 16  # 256 at 4096: 16x fewer bytes than V in the same dtype


def storage_bytes(modules: int, out: int, inp: int, dtype: str, rank: int | None) -> int:
    return modules * out * (inp if rank is None else rank) * BYTES[dtype]


def _anchor_bytes(anchor) -> int:
    return sum(t.numel() * t.element_size() for t in anchor.tensors())


def _directions(d: int, device: torch.device, g: torch.Generator) -> dict[str, torch.Tensor]:
    random = torch.randn(d, d, generator=g, device=device)
    U = torch.linalg.qr(torch.randn(d, d, generator=g, device=device))[0]
    W = torch.linalg.qr(torch.randn(d, d, generator=g, device=device))[0]
    decaying = (U / torch.arange(1, d + 1, device=device)) @ W.T
    out = {}
    for name, V in (("random", random), ("decaying_spectrum", decaying)):
        top = torch.linalg.matrix_norm(V, ord=2) ** 2 / torch.linalg.matrix_norm(V)
        out[name] = V / top  # largest eigenvalue of V V^T / ||V||_F becomes 1
    return out


def run(mode: str, device: torch.device) -> dict:
    s = SHAPES[mode]
    d, rank = s["d"], _rank(s["d"])
    g = torch.Generator(device=device).manual_seed(0)
    storages = {"float32": ("float32", None), "bfloat16": ("bfloat16", None),
                "lowrank_float32": ("float32", rank), "lowrank_bfloat16": ("bfloat16", rank)}
    errors: dict[str, dict] = {}
    kept_bytes: dict[str, int] = {}
    for vname, V in _directions(d, device, g).items():
        exact = build_anchors({"m": V}, "fro")["m"]
        draws = [(torch.randn(8, d, generator=g, device=device), torch.randn(d, 8, generator=g, device=device))
                 for _ in range(s["draws"])]
        for label, (dtype, k) in storages.items():
            anchor = build_anchors({"m": V.to(getattr(torch, dtype))}, "fro", rank=k)["m"]
            kept_bytes[label] = _anchor_bytes(anchor)
            penalty_err, anchor_err = 0.0, 0.0
            for A, B in draws:
                ref = exact.penalty(A, B).item()
                penalty_err = max(penalty_err, abs(anchor.penalty(A, B).item() / ref - 1))
                CB = exact.V @ (exact.V.T @ B) / exact.norm
                CkB = anchor.V.float() @ (anchor.V.float().T @ B) / anchor.norm
                anchor_err = max(anchor_err, (torch.linalg.matrix_norm(CB - CkB) / torch.linalg.matrix_norm(CB)).item())
            errors.setdefault(label, {})[vname] = {"penalty_relative_error": penalty_err, "anchor_error": anchor_err}
        del exact
    llama_rank = _rank(LLAMA2_7B_QV["inp"])
    llama = {label: storage_bytes(**LLAMA2_7B_QV, dtype=dtype, rank=None if k is None else llama_rank)
             for label, (dtype, k) in storages.items()}
    reduction = llama["float32"] / llama["lowrank_float32"]
    return result(
        "direction_device_bytes", reduction, ">= 4 (dense float32 bytes / low-rank bytes)", reduction >= 4,
        llama2_7b_qv_bytes=llama, llama2_7b_qv_gib={k: round(v / 2**30, 4) for k, v in llama.items()},
        reference_anchor_bytes=storage_bytes(**LLAMA2_7B_QV, dtype="float32", rank=None),
        llama2_7b_rank=llama_rank,
        measured_bytes_one_module=kept_bytes, measured_module_shape=[d, d], measured_rank=rank,
        penalty_error_vs_exact_float32=errors,
        error_setup=f"max over {s['draws']} random Gaussian A (8,{d}) / B ({d},8); V scaled so that "
                    "C's top eigenvalue is 1; lowrank uses the randomised factor of build_anchors",
        device=str(device), repeats=s["draws"], dtype="penalty float32")
