"""``naive_over_fast_penalty``: the reference-style penalty against ours, one module, forward
and backward (what a training step pays).

Reference style: the anchor ``C = V V^T / n`` is materialised once (out, out) and every step
computes ``|| B A - C (B A) ||_F^2``, O(out^2 in). Ours: ``DirectionAnchor.penalty`` (never forms C nor
B A), O(out in r). On CUDA a second figure adds the reference's per-step host-to-device copy
of C (pageable memory, as the reference keeps its list of C's on the host).
"""

from __future__ import annotations

import time

import torch

from asft.regularizer import DirectionAnchor
from benchmarks.timing import interleaved, median, result, synchronize

SHAPES = {"tiny": dict(d=64, r=8, repeats=3, warmup=1),
          "quick": dict(d=2048, r=8, repeats=5, warmup=1),
          "full": dict(d=4096, r=8, repeats=5, warmup=1)}


def run(mode: str, device: torch.device) -> dict:
    s = SHAPES[mode]
    d, r = s["d"], s["r"]
    g = torch.Generator(device=device).manual_seed(0)
    V = 1e-3 * torch.randn(d, d, generator=g, device=device)
    A = (torch.randn(r, d, generator=g, device=device) / d ** 0.5).requires_grad_()
    B = (1e-3 * torch.randn(d, r, generator=g, device=device)).requires_grad_()
    norm = torch.linalg.matrix_norm(V)
    synchronize(device)
    start = time.perf_counter()
    C = V @ V.T / norm  # the reference builds it once, before training
    anchor = DirectionAnchor(V, norm)
    synchronize(device)
    build_s = time.perf_counter() - start
    C_host = C.cpu() if device.type == "cuda" else None

    def naive(anchor) -> None:
        update = B @ A
        penalty = (update - anchor() @ update).square().sum()
        penalty.backward()
        penalty.item()

    def fast() -> None:
        penalty = anchor.penalty(A, B)
        penalty.backward()
        penalty.item()

    arms = {"naive": lambda: naive(lambda: C), "fast": fast}
    if C_host is not None:
        arms["naive_with_copy"] = lambda: naive(lambda: C_host.to(device))
    seconds = interleaved(arms, s["repeats"], s["warmup"], device)
    naive_s, fast_s = median(seconds["naive"]), median(seconds["fast"])
    ratio = naive_s / fast_s
    with torch.no_grad():
        check = abs((B @ A - C @ (B @ A)).square().sum().item() / anchor.penalty(A, B).item() - 1)
    copy_ratio = round(median(seconds["naive_with_copy"]) / fast_s, 2) if C_host is not None else None
    return result(
        "naive_over_fast_penalty", ratio, None, None,
        naive_median_s=round(naive_s, 6), fast_median_s=round(fast_s, 6),
        naive_with_h2d_copy_over_fast_penalty=copy_ratio,
        naive_with_h2d_copy_note=None if copy_ratio else "CPU run: no host-to-device copy exists",
        naive_anchor_build_s=round(build_s, 4), relative_difference_naive_vs_fast=check,
        shapes={"out": d, "in": d, "r": r}, dtype="float32", device=str(device),
        repeats=s["repeats"], warmup=s["warmup"], work="forward + backward of one module's penalty")
