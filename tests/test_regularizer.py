"""The fast AsFT penalty against a naive reference that materialises I - C and B A."""

from __future__ import annotations

import pytest
import torch

from asft.regularizer import DirectionAnchor, ProjectorAnchor, build_anchors, top_k_projector


def asft_penalty(A, B, V, norm, scaling=None, projector=None):
    """The penalty through the anchor the variant names (the trainer's path)."""
    anchor = ProjectorAnchor(projector) if projector is not None else DirectionAnchor(V, norm)
    return anchor.penalty(A, B, scaling)


def naive_penalty(A, B, V, norm, scaling=None, projector=None):
    out = B.shape[0]
    C = projector @ projector.T if projector is not None else V @ V.T / norm
    update = B @ A if scaling is None else scaling * (B @ A)
    return torch.linalg.matrix_norm((torch.eye(out, dtype=A.dtype) - C) @ update) ** 2


def random_module(out=24, inp=16, r=4, rank_v=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, inp, generator=g, dtype=dtype)
    B = torch.randn(out, r, generator=g, dtype=dtype)
    if rank_v is None:
        V = torch.randn(out, inp, generator=g, dtype=dtype)
    else:
        V = torch.randn(out, rank_v, generator=g, dtype=dtype) @ torch.randn(rank_v, inp, generator=g, dtype=dtype)
    return A, B, V


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["fro", "fro-scaled", "projector"])
def test_fast_form_matches_naive_value_and_gradients(seed, variant):
    A, B, V = random_module(seed=seed)
    norm = torch.linalg.matrix_norm(V)
    kw = {}
    if variant == "fro-scaled":
        kw["scaling"] = 4.0
    if variant == "projector":
        kw["projector"] = torch.linalg.svd(V, full_matrices=False)[0][:, :5]

    A1, B1 = A.clone().requires_grad_(), B.clone().requires_grad_()
    naive = naive_penalty(A1, B1, V, norm, **kw)
    naive.backward()
    A2, B2 = A.clone().requires_grad_(), B.clone().requires_grad_()
    fast = asft_penalty(A2, B2, V, norm, **kw)
    fast.backward()

    assert fast.item() == pytest.approx(naive.item(), rel=1e-6)
    torch.testing.assert_close(A2.grad, A1.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(B2.grad, B1.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("variant", ["fro", "projector"])
def test_library_penalty_float32_matches_naive_float64_with_gradients(variant):
    A, B, V = random_module(out=48, inp=32, r=8, seed=3)
    norm = torch.linalg.matrix_norm(V)
    proj = top_k_projector(V, 6) if variant == "projector" else None
    A1, B1 = A.clone().requires_grad_(), B.clone().requires_grad_()
    naive = naive_penalty(A1, B1, V, norm, projector=None if proj is None else proj.double())
    naive.backward()
    A2 = A.float().requires_grad_()
    B2 = B.float().requires_grad_()
    fast = asft_penalty(A2, B2, V.float(), norm.float(), projector=proj)
    fast.backward()
    assert fast.dtype == torch.float32
    assert fast.item() == pytest.approx(naive.item(), rel=1e-4)
    torch.testing.assert_close(A2.grad.double(), A1.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(B2.grad.double(), B1.grad, rtol=1e-4, atol=1e-4)


def test_penalty_is_float32_for_bf16_inputs_and_keeps_gradients():
    A, B, V = (t.to(torch.bfloat16) for t in random_module(seed=4, dtype=torch.float32))
    A.requires_grad_()
    B.requires_grad_()
    p = asft_penalty(A, B, V, torch.linalg.matrix_norm(V.float()))
    assert p.dtype == torch.float32
    p.backward()
    assert A.grad.dtype == torch.bfloat16 and A.grad.abs().sum() > 0
    expected = naive_penalty(A.detach().double(), B.detach().double(), V.double(), torch.linalg.matrix_norm(V.double()))
    assert p.item() == pytest.approx(expected.item(), rel=1e-4)


def test_projector_penalty_vanishes_when_B_lies_in_the_span_of_the_top_singular_vectors():
    A, _, V = random_module(out=30, inp=20, r=4, rank_v=3, seed=5)
    U = top_k_projector(V, 3)
    B = U.double() @ torch.randn(3, 4, dtype=torch.float64)
    assert asft_penalty(A, B, None, None, projector=U).item() == pytest.approx(0.0, abs=1e-8)
    # the same B is penalised by the paper's C, which is not a projector (C @ C != C)
    assert asft_penalty(A, B, V, torch.linalg.matrix_norm(V)).item() > 1e-3


def test_penalty_is_zero_for_zero_B_and_scales_quadratically():
    A, B, V = random_module(seed=6)
    norm = torch.linalg.matrix_norm(V)
    assert asft_penalty(A, torch.zeros_like(B), V, norm).item() == 0.0
    base = asft_penalty(A, B, V, norm).item()
    assert asft_penalty(A, 3 * B, V, norm).item() == pytest.approx(9 * base, rel=1e-5)
    assert asft_penalty(A, B, V, norm, scaling=0.5).item() == pytest.approx(0.25 * base, rel=1e-5)


def test_build_anchors_fro_and_projector():
    _, _, V = random_module(seed=7, dtype=torch.float32)
    A, B, _ = random_module(seed=8, dtype=torch.float32)
    fro = build_anchors({"m": V}, "fro")["m"]
    assert fro.norm.item() == pytest.approx(torch.linalg.matrix_norm(V).item(), rel=1e-6)
    assert fro.penalty(A, B).item() == pytest.approx(
        naive_penalty(A.double(), B.double(), V.double(), torch.linalg.matrix_norm(V.double())).item(), rel=1e-4)
    proj = build_anchors({"m": V}, "projector", top_k=4)["m"]
    assert isinstance(proj, ProjectorAnchor) and proj.U.shape == (V.shape[0], 4) and proj.tensors() == (proj.U,)
    torch.testing.assert_close(proj.U.T @ proj.U, torch.eye(4), atol=1e-5, rtol=0)


def test_low_rank_anchor_is_exact_for_a_rank_k_direction_and_the_eigen_truncation_otherwise():
    # rank-5 V: the factor L (out, 5) gives exactly the dense penalty and gradients
    A, B, V = random_module(out=40, inp=30, rank_v=5, seed=3)
    exact = build_anchors({"m": V}, "fro")["m"]
    low = build_anchors({"m": V}, "fro", rank=5)["m"]
    assert low.V.shape == (40, 5) and torch.equal(low.norm, exact.norm)
    A1, B1 = A.clone().requires_grad_(), B.clone().requires_grad_()
    A2, B2 = A.clone().requires_grad_(), B.clone().requires_grad_()
    p1, p2 = exact.penalty(A1, B1), low.penalty(A2, B2)
    (p1 + p2).backward()
    torch.testing.assert_close(p2, p1, rtol=1e-9, atol=0)
    torch.testing.assert_close(B2.grad, B1.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(A2.grad, A1.grad, rtol=1e-8, atol=1e-10)
    # full-rank V (both orientations): L L^T / n is the top-k eigen-truncation of C = V V^T / n
    for out, inp in ((24, 16), (16, 24)):
        _, _, V = random_module(out=out, inp=inp, seed=4)
        U, S, _ = torch.linalg.svd(V, full_matrices=False)
        L = build_anchors({"m": V}, "fro", rank=6)["m"].V
        torch.testing.assert_close(L @ L.T, (U[:, :6] * S[:6] ** 2) @ U[:, :6].T, rtol=1e-8, atol=1e-8)


def test_low_rank_factor_keeps_the_dtype_and_the_global_rng():
    V = torch.randn(32, 48)
    state = torch.get_rng_state()
    L = build_anchors({"m": V.to(torch.bfloat16)}, "fro", rank=4)["m"].V
    assert L.dtype == torch.bfloat16 and L.shape == (32, 4)
    assert torch.equal(torch.get_rng_state(), state)


def test_anchor_product_gradient_passes_gradcheck_including_second_use_of_the_output():
    # the hand-written backward (C symmetric: grad -> C grad) against finite differences
    from asft.regularizer import apply_anchor

    _, B, V = random_module(out=12, inp=9, r=3, seed=5)
    B.requires_grad_(True)
    norm = torch.linalg.matrix_norm(V)
    assert torch.autograd.gradcheck(lambda M: apply_anchor(M, V, norm) ** 2, (B,))
    assert torch.allclose(apply_anchor(B, V, norm), V @ V.T @ B / norm, rtol=1e-12, atol=0)


def test_row_block_anchor_penalises_each_block_with_its_own_C_and_ignores_the_other_rows():
    from asft.architectures import QkvLayout

    layout = QkvLayout(groups=3, q=4, k=2, v=2)  # per group [q q q q | k k | v v], interleaved like GPT-NeoX
    A, B, V = random_module(out=layout.rows_total, seed=5)
    A.requires_grad_(True), B.requires_grad_(True)
    blocks = [layout.rows("q"), layout.rows("v")]
    (anchor,) = build_anchors({"m": V}, "fro", row_blocks={"m": blocks}).values()
    fast = anchor.penalty(A, B)
    naive = sum(naive_penalty(A, B[rows], V[rows], torch.linalg.matrix_norm(V[rows])) for rows in blocks)
    assert float(fast) == pytest.approx(float(naive), rel=1e-10)
    grads = torch.autograd.grad(fast, (A, B))
    for g, n in zip(grads, torch.autograd.grad(naive, (A, B))):
        torch.testing.assert_close(g, n, rtol=1e-9, atol=1e-12)
    assert torch.count_nonzero(grads[1][layout.rows("k")]) == 0  # the k rows are not penalised
    assert float(fast) != pytest.approx(float(asft_penalty(A, B, V, torch.linalg.matrix_norm(V))), rel=1e-3)
    projected = anchor.apply(B.detach())  # Safe LoRA's C B: blocks projected, k rows as they were
    assert torch.equal(projected[layout.rows("k")], B.detach()[layout.rows("k")])
    q = layout.rows("q")
    torch.testing.assert_close(projected[q], V[q] @ (V[q].T @ B.detach()[q]) / torch.linalg.matrix_norm(V[q]))
    assert sorted(torch.cat([layout.rows(b) for b in "qkv"]).tolist()) == list(range(layout.rows_total))


def _grouped_world(dtype=torch.float32):
    """Five modules: three (24, 16), two (8, 16), and a row-block one that stays per module."""
    from asft.regularizer import build_anchors

    shapes = [(24, 16), (24, 16), (8, 16), (24, 16), (8, 16)]
    modules = {f"m{i}": random_module(out, inp, seed=i, dtype=dtype) for i, (out, inp) in enumerate(shapes)}
    anchors = build_anchors({n: V for n, (_, _, V) in modules.items()})
    A, B, V = random_module(12, 16, seed=9, dtype=dtype)
    anchors.update(build_anchors({"rows": V}, row_blocks={"rows": [torch.arange(0, 4), torch.arange(8, 12)]}))
    modules["rows"] = (A, B, V)
    factors = {n: (A.clone().requires_grad_(), B.clone().requires_grad_()) for n, (A, B, _) in modules.items()}
    return anchors, factors


@pytest.mark.parametrize("scaling", [None, 4.0])
def test_batched_penalty_of_same_shaped_modules_equals_the_per_module_penalties(scaling):
    from asft.regularizer import group_anchors

    anchors, factors = _grouped_world()
    reference = sum(anchors[n].penalty(A, B, scaling) for n, (A, B) in factors.items())
    expected = torch.autograd.grad(reference, [t for pair in factors.values() for t in pair])

    groups, single = group_anchors(anchors)
    assert sorted(sorted(g.names) for g in groups) == [["m0", "m1", "m3"], ["m2", "m4"]] and single == ["rows"]
    assert groups[0].V.shape == (3, 24, 16)
    for group in groups:  # V is held once: every grouped anchor is a view of its group's stack
        assert all(anchors[n].V.untyped_storage().data_ptr() == group.V.untyped_storage().data_ptr()
                   for n in group.names)
    batched = sum(g.penalty([factors[n] for n in g.names], scaling) for g in groups) + \
        sum(anchors[n].penalty(*factors[n], scaling) for n in single)
    got = torch.autograd.grad(batched, [t for pair in factors.values() for t in pair])
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=0)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_bf16_anchor_products_stay_close_to_float32_and_keep_a_float32_penalty():
    from asft.regularizer import build_anchors

    A, B, V = random_module(64, 48, r=8, seed=3, dtype=torch.float32)
    B = B.requires_grad_()
    exact = build_anchors({"m": V})["m"].penalty(A, B)
    fast = build_anchors({"m": V}, compute_dtype=torch.bfloat16)["m"].penalty(A, B)
    assert fast.dtype == torch.float32
    error = abs(fast.item() - exact.item()) / exact.item()
    assert 0 < error < 1e-2  # bf16 was used (not bitwise float32), and it costs well under 1 %
    (gradient,) = torch.autograd.grad(fast, B)
    (reference,) = torch.autograd.grad(exact, B)
    assert gradient.dtype == torch.float32
    assert torch.linalg.matrix_norm(gradient - reference) / torch.linalg.matrix_norm(reference) < 1e-2


def test_bf16_batched_penalty_has_float32_gradients_close_to_the_exact_ones():
    """A stacked group's float32 norm promotes its bf16 products: the backward pass must cast back."""
    from asft.regularizer import build_anchors, group_anchors

    modules = [random_module(24, 16, r=4, seed=10 + i, dtype=torch.float32) for i in range(3)]
    vectors = {f"m{i}": V for i, (_, _, V) in enumerate(modules)}
    factors = [(A, B.requires_grad_()) for A, B, _ in modules]
    exact = sum(a.penalty(A, B) for a, (A, B) in zip(build_anchors(vectors).values(), factors))
    (group,), _ = group_anchors(build_anchors(vectors, compute_dtype=torch.bfloat16))
    fast = group.penalty(factors)
    assert fast.dtype == torch.float32 and abs(fast.item() - exact.item()) / exact.item() < 1e-2
    got = torch.autograd.grad(fast, [B for _, B in factors])
    expected = torch.autograd.grad(exact, [B for _, B in factors])
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32 and torch.linalg.matrix_norm(g - e) / torch.linalg.matrix_norm(e) < 2e-2
