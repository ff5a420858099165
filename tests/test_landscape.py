"""Safety landscape: directions, exact restore, basin widths, projections (pure math)."""

from __future__ import annotations

import pytest
import torch

from asft.landscape import (LandscapeConfig, WeightShift, axis_values, basin_width, grid_points,
                            perpendicular_direction, project_onto_axes)
from asft.update_inspection import ModuleUpdate


def vectors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layers.0.q": torch.randn(6, 4, generator=g), "layers.0.v": 3 * torch.randn(5, 4, generator=g)}


def test_perpendicular_direction_is_orthogonal_same_norm_and_seeded():
    V = vectors()
    perp = perpendicular_direction(V, seed=7)
    for name, v in V.items():
        p = perp[name]
        assert p.shape == v.shape and p.dtype == torch.float32
        assert abs(float((p * v).sum())) / float(v.norm() * p.norm()) < 1e-6
        assert float(p.norm()) == pytest.approx(float(v.norm()), rel=1e-6)
    again = perpendicular_direction(V, seed=7)
    assert all(torch.equal(perp[n], again[n]) for n in V)
    other = perpendicular_direction(V, seed=8)
    assert not torch.equal(perp["layers.0.q"], other["layers.0.q"])


class Tiny(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Module()])
        self.layers[0].q = torch.nn.Linear(4, 6, bias=False, dtype=dtype)
        self.layers[0].v = torch.nn.Linear(4, 5, bias=False, dtype=dtype)
        self.norm = torch.nn.LayerNorm(4, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_shift_moves_exactly_and_restores_bitwise(dtype):
    torch.manual_seed(0)
    model = Tiny(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    V = vectors()
    P = perpendicular_direction(V, seed=1)
    with WeightShift(model, [V, P]) as shift:
        for a, b in [(0.5, -0.25), (-1.0, 1.0), (0.3, 0.0)] * 3:
            shift.move(a, b)
            expected = (before["layers.0.q.weight"].float() + a * V["layers.0.q"] + b * P["layers.0.q"]).to(dtype)
            torch.testing.assert_close(model.layers[0].q.weight.detach(), expected)
        assert torch.equal(model.norm.weight, before["norm.weight"])  # norm layers untouched
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key


def test_weight_shift_names_missing_module():
    from asft.errors import AsftError

    with pytest.raises(AsftError, match="layers.9.q.*not in the model"):
        WeightShift(Tiny(torch.float32), [{"layers.9.q": torch.zeros(6, 4)}])


def test_basin_width_on_exact_crossings():
    xs = axis_values(-1.0, 1.0, 9)  # steps of 0.25
    scores = [60, 40, 20, 0, 0, 0, 0, 20, 40]
    assert basin_width(xs, scores, 20) == {"low": -0.5, "high": 0.75, "width": 1.25,
                                           "low_censored": False, "high_censored": False}


def test_basin_width_interpolates_and_ignores_islands():
    xs = [-1.0, -0.5, 0.0, 0.5, 1.0]
    # right edge between 0.5 (10) and 1.0 (30): crossing at 0.75; the safe island at -1 is cut off by -0.5
    result = basin_width(xs, [0, 50, 5, 10, 30], 20)
    assert result["low"] == pytest.approx(-0.5 * 15 / 45)
    assert result["high"] == pytest.approx(0.75)
    assert result["width"] == pytest.approx(0.75 + 0.5 * 15 / 45)


def test_basin_width_censored_and_empty():
    assert basin_width([-1, 0, 1], [0, 0, 0], 20) == {"low": -1.0, "high": 1.0, "width": 2.0,
                                                      "low_censored": True, "high_censored": True}
    assert basin_width([-1, 0, 1], [0, 25, 0], 20)["width"] == 0.0


def test_grid_contains_aligned_point_once():
    config = LandscapeConfig(points=4, range_a=(-1.0, 1.0), range_b=(-0.5, 0.5))
    points = grid_points(config)
    assert points.count((0.0, 0.0)) == 1
    assert len(points) == 5 + 4  # 4 values + 0 on each axis, origin shared
    assert len(grid_points(config.model_copy(update={"mode": "2d"}))) == 25


def test_projection_recovers_coordinates_of_a_synthetic_checkpoint():
    V = vectors()
    P = perpendicular_direction(V, seed=3)
    updates = {n: ModuleUpdate(B=0.3 * V[n] + 0.2 * P[n]) for n in V}
    result = project_onto_axes(updates, [V, P])
    assert result["coords"] == pytest.approx([0.3, 0.2], abs=1e-6)
    assert result["residual_share"] < 1e-3


def test_projection_of_a_factored_update_with_off_plane_part():
    V = vectors()
    P = perpendicular_direction(V, seed=3)
    g = torch.Generator().manual_seed(9)
    B, A = torch.randn(6, 2, generator=g), torch.randn(2, 4, generator=g)
    updates = {"layers.0.q": ModuleUpdate(B=B, A=A, scaling=2.0)}
    dense = 2.0 * B @ A
    result = project_onto_axes(updates, [V, P])
    # naive least squares on the flattened, concatenated matrices
    D = torch.stack([torch.cat([V[n].flatten() for n in sorted(V)]), torch.cat([P[n].flatten() for n in sorted(V)])], 1).double()
    y = torch.cat([dense.flatten(), torch.zeros(20)]).double()
    coef = torch.linalg.lstsq(D, y.unsqueeze(1)).solution.squeeze(1)
    assert result["coords"] == pytest.approx(coef.tolist(), rel=1e-5)
    assert result["residual_share"] == pytest.approx(float((y - D @ coef).norm() / y.norm()), rel=1e-5)
