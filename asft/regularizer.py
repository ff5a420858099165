"""The AsFT penalty: the part of a LoRA update that leaves the alignment direction.

Per module, with ``V = W_aligned - W_base`` (out, in), ``n = ||V||_F`` and the anchor
``C = V V^T / n`` (Safe LoRA's construction, not a projector)::

    penalty = || (I - C) B A ||_F^2

evaluated exactly without ever forming C (out, out) or the update B A (out, in)::

    X = B - V (V^T B) / n                  # (out, r) == (I - C) B
    penalty = sum((X^T X) * (A A^T))        # ||X A||_F^2 = tr(X^T X A A^T), two (r, r) matrices

Low-rank storage (``rank``): with the best rank-k approximation ``V_k = U_k S_k W_k^T`` and
``W_k^T W_k = I``, ``V_k V_k^T = L L^T`` for ``L = U_k S_k`` (out, k). So ``C_k = L L^T / n``
(n stays the exact ``||V||_F``) is the top-k eigen-truncation of C, ``C_k B = L (L^T B) / n``
is the formula above with V replaced by L, and only L is kept: ``in / k`` times fewer bytes.

The named variant ``projector`` replaces C by a true orthogonal projector P = U_k U_k^T onto
the top-k left singular vectors of V (then the penalty is zero exactly when the columns of
B lie in span(U_k)).

Row blocks (``RowBlockAnchor``, for fused q/k/v weights anchored on q and v only): each block
of rows gets its own anchor built from its rows of V, as if it were a module of its own
(``(B A)[rows] = B[rows] A``); rows in no block are mapped to themselves, so the penalty
ignores them and a Safe LoRA projection keeps them.

Everything is computed in float32 (float64 if A is float64) whatever the model's dtype, but
the two anchor products may be asked for in bf16 (``compute_dtype``; a GPU accumulates them in
float32): the (r, r) sums stay float32.

Batched (``group_anchors``): modules whose kept V have one shape (every q_proj of a model, say)
are stacked once into a (G, out, k) tensor (each anchor then holds a view of it, so V is not
kept twice) and their penalties are one batched product: one kernel per shape instead of one
per module, the same value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

AnchorKind = Literal["fro", "projector"]


def apply_anchor(B: torch.Tensor, V: torch.Tensor, norm: float | torch.Tensor) -> torch.Tensor:
    """C @ B = V (V^T B) / n, without forming the (out, out) matrix C. V and n are constants."""
    return _AnchorProduct.apply(B, V, norm)


class _AnchorProduct(torch.autograd.Function):
    """C @ M with C = V V^T / n symmetric, so the backward pass is the same product on the gradient.

    Computed as ``((M^T V) V^T)^T / n``: both products read V row-major (as stored). The
    textbook ``V (V^T M)`` makes the CPU BLAS walk V transposed, 3-7x slower at LLM shapes,
    and autograd would add two more such products for the gradient.
    """

    @staticmethod
    def forward(ctx, M: torch.Tensor, V: torch.Tensor, norm: float | torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(V)
        ctx.norm = norm
        return _anchor_product(M, V, norm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (V,) = ctx.saved_tensors
        # a stacked group's (G, 1, 1) float32 norm promotes a bf16 product: the gradient comes back float32
        return _anchor_product(grad.to(V.dtype), V, ctx.norm).to(grad.dtype), None, None


def _anchor_product(M: torch.Tensor, V: torch.Tensor, norm: float | torch.Tensor) -> torch.Tensor:
    # .mT: the same expression for one module (2-D) and a stacked group (3-D, norm (G, 1, 1))
    return (((M.mT @ V) @ V.mT) / norm).mT.contiguous()


def _computed_in(X: torch.Tensor, V: torch.Tensor, norm, dtype: torch.dtype | None) -> torch.Tensor:
    """C X in ``dtype`` (None: X's), returned in X's dtype."""
    if dtype is None or dtype == X.dtype:
        return apply_anchor(X, V.to(X.dtype), norm)
    return apply_anchor(X.to(dtype), V.to(dtype), norm).to(X.dtype)


def top_k_projector(V: torch.Tensor, k: int) -> torch.Tensor:
    """U_k (out, k): the top-k left singular vectors of V, computed once in float32."""
    U, _, _ = torch.linalg.svd(V.float(), full_matrices=False)
    return U[:, :k].contiguous()


def low_rank_factor(V: torch.Tensor, k: int, *, oversample: int = 10, power_iterations: int = 4,
                    seed: int = 0) -> torch.Tensor:
    """L = U_k S_k (out, k), so that ``L L^T = V_k V_k^T`` for the best rank-k approximation V_k.

    Randomised range finder with power iterations (Halko et al. 2011) instead of a full SVD
    (O(out in k) instead of O(d^3): seconds instead of minutes for a 4096x4096 V on a CPU).
    Its own seeded generator leaves the global RNG (dropout, LoRA init) untouched.
    Computed in float32 (float64 for float64 V) and returned in V's dtype.
    """
    dtype = torch.float64 if V.dtype == torch.float64 else torch.float32
    M = V.to(dtype)
    k = min(k, *M.shape)
    q = min(k + oversample, *M.shape)
    generator = torch.Generator(device=M.device).manual_seed(seed)
    Q = torch.linalg.qr(M @ torch.randn(M.shape[1], q, generator=generator, device=M.device, dtype=dtype))[0]
    for _ in range(power_iterations):  # re-orthonormalised each time: s^(2i) decay would lose the tail in float32
        Q = torch.linalg.qr(M @ torch.linalg.qr((Q.T @ M).T)[0])[0]  # (Q^T M)^T = M^T Q, reading M row-major
    U, S, _ = torch.linalg.svd(Q.T @ M, full_matrices=False)  # (q, in): small
    return (Q @ (U[:, :k] * S[:k])).to(V.dtype)


class Anchor(ABC):
    """The one anchor concept: a left-multiplying map M of one module (``apply(X) = M X``).

    The AsFT penalty of a LoRA update is ``||(I - M) s B A||_F^2``, evaluated factored as
    ``sum((X^T X) * (A A^T))`` with ``X = (I - M) B``: nothing of size (out, in) or (out, out)
    is formed. Computed in float32 (float64 if A is float64) whatever the model's dtype.
    """

    @abstractmethod
    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """``M X``; each kind of anchor below says what M is."""

    def penalty(self, A: torch.Tensor, B: torch.Tensor, scaling: float | None = None) -> torch.Tensor:
        """``||(I - M) s B A||_F^2`` as a scalar autograd follows; ``scaling`` s (LoRA alpha/r)
        None leaves it out, as the reference implementation does."""
        dtype = torch.float64 if A.dtype == torch.float64 else torch.float32
        A, B = A.to(dtype), B.to(dtype)
        X = B - self.apply(B)
        return _scaled(((X.T @ X) * (A @ A.T)).sum(), scaling)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What the anchor keeps on the device (for memory accounting)."""
        return tuple(vars(self).values())


@dataclass
class DirectionAnchor(Anchor):
    """The paper's ``C = V V^T / n`` with ``n = ||V||_F``; ``V`` may be the low-rank factor L."""

    V: torch.Tensor
    norm: torch.Tensor
    compute_dtype: torch.dtype | None = None  # of the two products; None: float32

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        return _computed_in(X, self.V, self.norm, self.compute_dtype)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.V, self.norm


@dataclass
class ProjectorAnchor(Anchor):
    """The true orthogonal projector ``P = U U^T`` on V's top-k left singular vectors."""

    U: torch.Tensor
    compute_dtype: torch.dtype | None = None

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        return _computed_in(X, self.U, 1.0, self.compute_dtype)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.U,)


@dataclass
class RowBlockAnchor(Anchor):
    """M acting per block of rows: ``(M X)[rows] = anchor.apply(X[rows])`` for each block;
    rows in no block are left as they are (M = I there)."""

    blocks: list[tuple[torch.Tensor, Anchor]]  # (row indices, the anchor of those rows)

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        Y = X
        for rows, anchor in self.blocks:
            Y = Y.index_copy(0, rows, anchor.apply(X.index_select(0, rows)))
        return Y

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for rows, anchor in self.blocks for t in (rows, *anchor.tensors()))


def _scaled(penalty: torch.Tensor, scaling: float | None) -> torch.Tensor:
    return penalty if scaling is None else penalty * (scaling * scaling)


def _matrix_anchor(V: torch.Tensor, kind: AnchorKind, top_k: int, rank: int | None,
                   compute_dtype: torch.dtype | None) -> Anchor:
    if kind == "fro":
        kept = V if rank is None else low_rank_factor(V, rank)
        norm = torch.linalg.matrix_norm(V if V.dtype == torch.float64 else V.float())
        return DirectionAnchor(kept, norm, compute_dtype)
    if kind == "projector":
        return ProjectorAnchor(top_k_projector(V, min(top_k, min(V.shape))), compute_dtype)
    raise ValueError(f"unknown anchor kind {kind!r}; choose fro or projector")


def build_anchors(vectors: dict[str, torch.Tensor], kind: AnchorKind = "fro", top_k: int = 8,
                  rank: int | None = None, row_blocks: dict[str, list[torch.Tensor]] | None = None,
                  compute_dtype: torch.dtype | None = None) -> dict[str, Anchor]:
    """Per-module anchors from alignment directions (already on the training device).

    ``fro``: the paper's C = V V^T / ||V||_F (V is kept, in its stored dtype; the norm in
    float32, float64 for float64 V); with ``rank`` only the low-rank factor L (out, rank) is kept instead of V.
    ``projector``: only U_k is kept. Either way V can be freed afterwards.
    ``row_blocks``: for these modules, one anchor per block of rows (``RowBlockAnchor``).
    ``compute_dtype``: the dtype of the anchor products (None: float32).
    """
    anchors = {}
    for name, V in vectors.items():
        blocks = (row_blocks or {}).get(name)
        if blocks is None:
            anchors[name] = _matrix_anchor(V, kind, top_k, rank, compute_dtype)
        else:
            blocks = [rows.to(V.device) for rows in blocks]
            anchors[name] = RowBlockAnchor([(rows, _matrix_anchor(V[rows], kind, top_k, rank, compute_dtype))
                                            for rows in blocks])
    return anchors


@dataclass
class AnchorGroup:
    """Same-shaped direction/projector anchors as one stacked (G, out, k) tensor."""

    names: list[str]
    V: torch.Tensor  # (G, out, k)
    norm: torch.Tensor  # (G, 1, 1)
    compute_dtype: torch.dtype | None

    def penalty(self, factors: list[tuple[torch.Tensor, torch.Tensor]], scaling: float | None = None) -> torch.Tensor:
        """Sum over the group of ``||(I - M) s B A||_F^2``; ``factors`` (A, B) in ``names`` order."""
        dtype = torch.float64 if factors[0][0].dtype == torch.float64 else torch.float32
        A = torch.stack([a for a, _ in factors]).to(dtype)  # (G, r, in)
        B = torch.stack([b for _, b in factors]).to(dtype)  # (G, out, r)
        X = B - _computed_in(B, self.V, self.norm, self.compute_dtype)
        return _scaled(((X.mT @ X) * (A @ A.mT)).sum(), scaling)


def _group_key(anchor: Anchor):
    if isinstance(anchor, (DirectionAnchor, ProjectorAnchor)):
        kept = anchor.V if isinstance(anchor, DirectionAnchor) else anchor.U
        return type(anchor), tuple(kept.shape), kept.dtype, kept.device, anchor.compute_dtype
    return None  # row blocks stay per module


def group_anchors(anchors: dict[str, Anchor]) -> tuple[list[AnchorGroup], list[str]]:
    """The batched groups of ``anchors`` (two or more same-shaped ones) and the names left per module.

    Each grouped anchor's tensor is replaced by a view of its group's stack, so V is held once."""
    by_key: dict = {}
    for name, anchor in anchors.items():
        by_key.setdefault(_group_key(anchor), []).append(name)
    groups, single = [], list(by_key.pop(None, []))
    for names in by_key.values():
        if len(names) == 1:
            single += names
            continue
        members = [anchors[n] for n in names]
        if isinstance(members[0], DirectionAnchor):
            stack = torch.stack([a.V for a in members])
            norm = torch.stack([a.norm for a in members]).reshape(-1, 1, 1)
            for i, anchor in enumerate(members):
                anchor.V = stack[i]
        else:
            stack = torch.stack([a.U for a in members])
            norm = torch.ones(len(members), 1, 1, device=stack.device)
            for i, anchor in enumerate(members):
                anchor.U = stack[i]
        groups.append(AnchorGroup(names, stack, norm, members[0].compute_dtype))
    return groups, single
