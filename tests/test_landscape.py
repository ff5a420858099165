"""Safety landscape: directions, exact restore, basin widths, projections (pure math)."""

from __future__ import annotations

import pytest
import torch

from asft.errors import AsftError
from asft.landscape import (LandscapeConfig, WeightShift, axis_values, basin_width, grid_points,
                            perpendicular_direction, project_onto_axes, sft_direction, swept_axes)
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


def test_sft_direction_is_the_update_orthogonal_to_v_with_v_norm_and_records_the_cosine():
    V = vectors()
    g = torch.Generator().manual_seed(5)
    B, A = torch.randn(6, 2, generator=g), torch.randn(2, 4, generator=g)
    # q: a factored LoRA update (scaling 2); v: a dense one with a known share along V
    noise = torch.randn(5, 4, generator=g)
    updates = {"layers.0.q": ModuleUpdate(B=B, A=A, scaling=2.0), "layers.0.v": ModuleUpdate(B=0.5 * V["layers.0.v"] + noise)}
    axis, removed = sft_direction(V, updates, "adapter-x")
    for name, v in V.items():
        dW = updates[name].dense().double()
        assert abs(float((axis[name] * v).sum())) / float(v.norm() * axis[name].norm()) < 1e-6
        assert float(axis[name].norm()) == pytest.approx(float(v.norm()), rel=1e-6)
        # the axis is dW minus its projection on V, rescaled
        rest = dW - (float((dW * v.double()).sum()) / float(v.double().square().sum())) * v.double()
        torch.testing.assert_close(axis[name].double(), rest * (float(v.norm()) / float(rest.norm())), rtol=1e-5, atol=1e-6)
        cos = float((dW * v.double()).sum() / (dW.norm() * v.double().norm()))
        assert removed[name]["cos_with_V"] == pytest.approx(cos, rel=1e-6)
        assert removed[name]["update_norm"] == pytest.approx(float(dW.norm()), rel=1e-6)
    assert removed["layers.0.v"]["cos_with_V"] > 0.3  # the half step along V shows


def test_sft_direction_refuses_mismatched_or_parallel_updates():
    V = vectors()
    with pytest.raises(AsftError, match=r"adapter ad: its modules do not match the direction's \(1 direction modules have no "
                                        r"update, such as layers.0.v\)"):
        sft_direction(V, {"layers.0.q": ModuleUpdate(B=torch.ones(6, 4))}, "ad")
    extra = {**{n: ModuleUpdate(B=torch.randn(v.shape)) for n, v in V.items()}, "layers.1.q": ModuleUpdate(B=torch.ones(6, 4))}
    with pytest.raises(AsftError, match="1 updated modules are not in the direction, such as layers.1.q"):
        sft_direction(V, extra, "ad")
    parallel = {n: ModuleUpdate(B=-2.0 * v) for n, v in V.items()}
    with pytest.raises(AsftError, match="module layers.0.q: the update of adapter ad has no part orthogonal to V .zero or parallel"):
        sft_direction(V, parallel, "ad")
    with pytest.raises(AsftError, match="layers.0.q has an update of shape \\(4, 6\\)"):
        sft_direction(V, {n: ModuleUpdate(B=v.T.contiguous()) for n, v in V.items()}, "ad")


def test_axes_and_grid_with_the_sft_axis():
    one_d = LandscapeConfig(points=3)
    assert swept_axes(one_d, sft=False) == ("a", "b") and swept_axes(one_d, sft=True) == ("a", "b", "s")
    points = grid_points(one_d, ("a", "b", "s"))
    assert points == [(-1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 1.0, 0.0),
                      (0.0, 0.0, -1.0), (0.0, 0.0, 1.0)]
    two_d = LandscapeConfig(points=3, mode="2d", across="sft", range_b=(-0.5, 0.5))
    assert swept_axes(two_d, sft=True) == ("a", "s")
    assert grid_points(two_d, ("a", "s"))[:4] == [(-1.0, -0.5), (0.0, -0.5), (1.0, -0.5), (-1.0, 0.0)]


@pytest.mark.parametrize("update, adapter, message", [
    ({"mode": "2d", "across": "sft"}, None, "--across sft sweeps along an adapter's update; pass --adapter"),
    ({"mode": "2d"}, "ad", "--adapter in 2d mode is the axis across V only with --across sft"),
    ({"modules": "all"}, "ad", "--adapter with --modules all"),
])
def test_landscape_refuses_axis_requests_it_cannot_sweep_before_loading_anything(tmp_path, update, adapter, message):
    from asft.landscape import landscape

    with pytest.raises(AsftError, match=message):
        landscape(str(tmp_path / "no-model"), str(tmp_path / "no-prompts.jsonl"), str(tmp_path / "out"), adapter=adapter,
                  config=LandscapeConfig(**update))
    assert not (tmp_path / "out").exists()


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
def test_sft_axis_of_a_real_adapter_moves_the_model_along_it(updated_sandbox):
    from asft.direction import load_direction
    from asft.evaluation.generation import load_model
    from asft.update_inspection import adapter_updates

    V = load_direction(updated_sandbox["direction"]).vectors
    updates = adapter_updates(updated_sandbox["adapter"])
    axis, removed = sft_direction(V, updates, updated_sandbox["adapter"])
    assert sorted(axis) == sorted(V)
    for name, v in V.items():
        assert abs(float((axis[name] * v).sum())) / float(v.norm() * axis[name].norm()) < 1e-6
        assert float(axis[name].norm()) == pytest.approx(float(v.norm()), rel=1e-5)
        dW = updates[name].dense()
        assert removed[name]["cos_with_V"] == pytest.approx(float((dW * v).sum() / (dW.norm() * v.norm())), abs=1e-6)
    model, _ = load_model(updated_sandbox["aligned"], device="cpu")
    before = {name: model.get_submodule(name).weight.detach().clone() for name in V}
    with WeightShift(model, [axis]) as shift:
        shift.move(0.7)
        for name in V:
            torch.testing.assert_close(model.get_submodule(name).weight.detach(), before[name] + 0.7 * axis[name])
    assert all(torch.equal(model.get_submodule(name).weight, before[name]) for name in V)


@pytest.mark.slow
def test_landscape_refuses_an_adapter_on_other_modules_before_loading_the_model(updated_sandbox, tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from asft.landscape import landscape

    adapter = tmp_path / "q-only"
    adapter.mkdir()
    shutil.copy(f"{updated_sandbox['adapter']}/adapter_config.json", adapter)
    tensors = load_file(f"{updated_sandbox['adapter']}/adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if "q_proj" in k}, str(adapter / "adapter_model.safetensors"))
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    with pytest.raises(AsftError, match=r"adapter .*q-only: its modules do not match the direction's \(2 direction modules "
                                        r"have no update, such as model.layers.0.self_attn.v_proj\)"):
        landscape(str(tmp_path / "not-a-model"), updated_sandbox["harmful_eval"], str(tmp_path / "x"),
                  direction=updated_sandbox["direction"], adapter=str(adapter), config=LandscapeConfig(device="cpu"))
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_landscape_1d_on_tiny_sandbox(updated_sandbox, tmp_path):
    import csv
    import json

    from asft.direction import load_direction
    from asft.evaluation.generation import generate, load_model
    from asft.evaluation.judges import KeywordJudge
    from asft.evaluation.datasets import load_harmful
    from asft.landscape import landscape
    from asft.templates import render_prompt

    config = LandscapeConfig(points=3, limit=6, max_new_tokens=8, utility_limit=4, device="cpu")
    out = str(tmp_path / "ls")
    summary = landscape(updated_sandbox["aligned"], updated_sandbox["harmful_eval"], out, direction=updated_sandbox["direction"],
                        finetuned=updated_sandbox["moved"], adapter=updated_sandbox["adapter"],
                        utility={"sst2": updated_sandbox["utility_eval"]["sst2"]}, config=config)
    rows = list(csv.DictReader(open(f"{out}/grid.csv")))
    assert [(float(r["a"]), float(r["b"]), float(r["s"])) for r in rows] == [
        (-1, 0, 0), (0, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
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
    for key, name in (("a", "aligned"), ("b", "perp"), ("s", "sft")):
        others = [k for k in "abs" if k != key]
        line = sorted((float(r[key]), float(r["harmful_score"])) for r in rows if all(float(r[k]) == 0 for k in others))
        assert len(line) == 3
        assert summary[f"width_{name}"] == pytest.approx(basin_width(*zip(*line), 20.0)["width"])
    # the moved checkpoint lies in the (V, d_perp) plane: no part along the sft axis
    assert summary["finetuned"]["a"] == pytest.approx(0.3, abs=1e-4)
    assert summary["finetuned"]["b"] == pytest.approx(0.2, abs=1e-4)
    assert summary["finetuned"]["s"] == pytest.approx(0.0, abs=1e-4)
    assert summary["axes"] == ["a", "b", "s"]
    modules = summary["sft_axis"]["modules"]
    assert sorted(modules) == sorted(load_direction(updated_sandbox["direction"]).vectors)
    assert all(-1 <= m["cos_with_V"] <= 1 and m["update_norm"] > 0 for m in modules.values())
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

    grid = run_cli("landscape", *common, "--direction", updated_sandbox["direction"], "--out", str(tmp_path / "ls2"),
                   "--mode", "2d", "--across", "sft", "--adapter", updated_sandbox["adapter"], "--points", "2",
                   "--limit", "2", "--max-new-tokens", "2", "--json")
    assert grid.returncode == 0, grid.stderr
    two_d = json.loads(grid.stdout)
    assert two_d["axes"] == ["a", "s"] and two_d["points"] == 9 and two_d["width_perp"] is None
    assert two_d["width_sft"] == two_d["basin_sft"]["width"] and two_d["sft_axis"]["adapter"] == updated_sandbox["adapter"]
    assert (tmp_path / "ls2" / "grid.csv").read_text().splitlines()[0].startswith("a,s,harmful_score")
    assert [p.rsplit("/", 1)[1] for p in two_d["plots"]] == ["landscape_1d.png", "landscape_2d.png"]

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
