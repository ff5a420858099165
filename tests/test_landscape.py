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


# ---------------------------------------------------------------- on the tiny sandbox (real models and files)

@pytest.mark.slow
def test_weight_shift_restores_a_real_model_after_generation(updated_sandbox):
    from safetensors.torch import load_file

    from asft.direction import load_direction
    from asft.evaluation.generation import generate, load_model

    model, tokenizer = load_model(updated_sandbox["aligned"], device="cpu")
    V = load_direction(updated_sandbox["direction"]).vectors
    with WeightShift(model, [V, perpendicular_direction(V, seed=0)]) as shift:
        for a, b in [(-1.0, 0.0), (0.0, 1.0), (0.5, -0.5)]:
            shift.move(a, b)
            generate(model, tokenizer, ["### Instruction:\nhello\n\n### Response:"], max_new_tokens=4, progress=False)
    on_disk = load_file(f"{updated_sandbox['aligned']}/model.safetensors")
    state = model.state_dict()
    assert on_disk.keys() <= state.keys()
    assert all(torch.equal(state[k], v) for k, v in on_disk.items())


@pytest.mark.slow
def test_landscape_1d_on_tiny_sandbox(updated_sandbox, tmp_path):
    import csv
    import json

    from asft.evaluation.generation import generate, load_model
    from asft.evaluation.judges import KeywordJudge
    from asft.evaluation.datasets import load_harmful
    from asft.landscape import landscape
    from asft.templates import render_prompt

    config = LandscapeConfig(points=3, limit=6, max_new_tokens=8, utility_limit=4, device="cpu")
    out = str(tmp_path / "ls")
    summary = landscape(updated_sandbox["aligned"], updated_sandbox["harmful_eval"], out, direction=updated_sandbox["direction"],
                        finetuned=updated_sandbox["moved"], utility={"sst2": updated_sandbox["utility_eval"]["sst2"]}, config=config)
    rows = list(csv.DictReader(open(f"{out}/grid.csv")))
    assert [(float(r["a"]), float(r["b"])) for r in rows] == [(-1, 0), (0, 0), (1, 0), (0, -1), (0, 1)]
    assert {"harmful_score", "refusal_rate", "utility_sst2", "seconds"} <= rows[0].keys()
    # keyword judge: harmful = no refusal phrase, so the two add up to 100
    assert all(float(r["harmful_score"]) + float(r["refusal_rate"]) == pytest.approx(100) for r in rows)
    # the aligned point is the untouched model: same score as generating without any sweep
    model, tokenizer = load_model(updated_sandbox["aligned"], device="cpu")
    records = [p.record for p in load_harmful(updated_sandbox["harmful_eval"], 6)]
    answers = generate(model, tokenizer, [render_prompt(r) for r in records], max_new_tokens=8, progress=False)
    direct = 100 * sum(v.flagged for v in KeywordJudge().flags([r.instruction for r in records], answers)) / 6
    assert float(rows[1]["harmful_score"]) == pytest.approx(direct)
    # widths follow from the grid by the documented rule
    on_a = sorted((float(r["a"]), float(r["harmful_score"])) for r in rows if float(r["b"]) == 0)
    assert summary["width_aligned"] == pytest.approx(basin_width(*zip(*on_a), 20.0)["width"])
    assert summary["finetuned"]["a"] == pytest.approx(0.3, abs=1e-4)
    assert summary["finetuned"]["b"] == pytest.approx(0.2, abs=1e-4)
    assert summary["restored_bitwise"] is True
    assert json.load(open(f"{out}/summary.json"))["width_perp"] == summary["width_perp"]
    assert [p.rsplit("/", 1)[1] for p in summary["plots"]] == ["landscape_1d.png"]
    assert open(summary["plots"][0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_landscape_json_and_errors(updated_sandbox, tmp_path):
    import json

    from cli_runner import run_cli

    common = ["--model", updated_sandbox["aligned"], "--harmful", updated_sandbox["harmful_eval"]]
    done = run_cli("landscape", *common, "--direction", updated_sandbox["direction"], "--out", str(tmp_path / "ls"),
                   "--points", "3", "--range", "-0.5,0.5", "--limit", "4", "--max-new-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {"width_aligned", "width_perp", "plots", "seconds_per_point", "basin_aligned"} <= summary.keys()
    assert summary["points"] == 5 and summary["basin_perp"]["high"] <= 0.5
    assert all((tmp_path / "ls" / p.rsplit("/", 1)[1]).exists() for p in summary["plots"])

    missing = run_cli("landscape", *common, "--direction", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and missing.stderr.startswith("asft: error: direction") and "Traceback" not in missing.stderr
    assert not (tmp_path / "x").exists()


def test_cli_range_parsing():
    from asft.cli.landscape import parse_range
    from asft.errors import AsftError

    assert parse_range("-1,0.5", "--range") == (-1.0, 0.5)
    for bad in ("1,-1", "1", "a,b", "-1,0,1"):
        with pytest.raises(AsftError, match="--range"):
            parse_range(bad, "--range")


@pytest.mark.slow
def test_landscape_refuses_a_direction_for_another_model(updated_sandbox, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from asft.direction import DirectionConfig, extract_direction
    from asft.errors import AsftError
    from asft.landscape import landscape

    config = LlamaConfig(hidden_size=64, intermediate_size=8, num_hidden_layers=3, num_attention_heads=4,
                         vocab_size=16, max_position_embeddings=16)
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(tmp_path / name)
    extract_direction(DirectionConfig(aligned=str(tmp_path / "a"), base=str(tmp_path / "b"), out=str(tmp_path / "d")))
    with pytest.raises(AsftError, match="pass --direction"):
        landscape(updated_sandbox["aligned"], updated_sandbox["harmful_eval"], str(tmp_path / "x"), config=LandscapeConfig(device="cpu"))
    with pytest.raises(AsftError, match=r"model.layers.2.self_attn.q_proj \(from the direction\) is not in the model"):
        landscape(updated_sandbox["aligned"], updated_sandbox["harmful_eval"], str(tmp_path / "x"), direction=str(tmp_path / "d"),
                  config=LandscapeConfig(device="cpu"))
    assert not (tmp_path / "x").exists()
