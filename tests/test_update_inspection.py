"""Update decomposition: shares pinned against naive dense computations, PEFT files read raw."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from asft import storage
from asft.errors import AsftError
from asft.update_inspection import ModuleUpdate, adapter_updates, decompose

OUT, IN, R = 12, 10, 3


def naive_row(dW: torch.Tensor, V: torch.Tensor, k: int) -> dict:
    """Reference: materialise C, P and the update; float64."""
    dW, V = dW.double(), V.double()
    n = torch.linalg.matrix_norm(V)
    C = V @ V.T / n
    U = torch.linalg.svd(V, full_matrices=False).U[:, :k]
    P = U @ U.T
    I = torch.eye(V.shape[0], dtype=torch.float64)
    norm = torch.linalg.matrix_norm(dW)
    share = lambda M: float(torch.linalg.matrix_norm(M @ dW) / norm)  # noqa: E731
    return {"along_C": share(C), "orth_C": share(I - C), "along_P": share(P), "orth_P": share(I - P),
            "cosine": float((dW * V).sum() / (norm * n)), "update_norm": float(norm)}


@pytest.fixture
def V():
    return torch.randn(OUT, IN, generator=torch.Generator().manual_seed(1))


def test_random_adapter_matches_naive(V):
    g = torch.Generator().manual_seed(2)
    update = ModuleUpdate(B=torch.randn(OUT, R, generator=g), A=torch.randn(R, IN, generator=g), scaling=32 / R)
    row = decompose("m", update, V, top_k=4)
    expected = naive_row(update.dense(), V, 4)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-4), key
    # the projector's shares add up in squares, C's do not
    assert row["along_P"] ** 2 + row["orth_P"] ** 2 == pytest.approx(1.0, rel=1e-5)
    assert abs(row["along_C"] ** 2 + row["orth_C"] ** 2 - 1.0) > 1e-3
    # the penalty is the training term: unscaled B @ A
    n = torch.linalg.matrix_norm(V.double())
    BA = (update.B @ update.A).double()
    assert row["penalty"] == pytest.approx(float(torch.linalg.matrix_norm(BA - V.double() @ (V.double().T @ BA) / n) ** 2), rel=1e-4)


def test_dense_update_matches_naive(V):
    dW = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(3))
    row = decompose("m", ModuleUpdate(B=dW), V, top_k=5)
    for key, value in naive_row(dW, V, 5).items():
        assert row[key] == pytest.approx(value, rel=1e-4), key


def test_update_in_span_of_projector_has_no_orthogonal_share(V):
    U = torch.linalg.svd(V, full_matrices=False).U[:, :R]
    g = torch.Generator().manual_seed(4)
    update = ModuleUpdate(B=U @ torch.randn(R, R, generator=g), A=torch.randn(R, IN, generator=g), scaling=2.0)
    row = decompose("m", update, V, top_k=R)
    assert row["orth_P"] < 1e-3
    assert row["along_P"] == pytest.approx(1.0, abs=1e-5)


def test_update_equal_to_V_is_along_it(V):
    row = decompose("m", ModuleUpdate(B=0.5 * V), V, top_k=IN)
    assert row["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert row["orth_P"] < 1e-3


def test_zero_update_has_no_shares(V):
    row = decompose("m", ModuleUpdate(B=torch.zeros(OUT, R), A=torch.randn(R, IN)), V, top_k=2)
    assert row["update_norm"] == 0.0 and row["along_C"] is None and row["cosine"] is None


def test_shape_mismatch_is_a_user_error(V):
    with pytest.raises(AsftError, match="shape"):
        decompose("m", ModuleUpdate(B=torch.randn(OUT, IN + 1)), V, top_k=2)


def write_adapter(folder, factors: dict, **config):
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (B, A) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = B.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": R, "lora_alpha": 16, **config}))
    return str(folder)


def test_adapter_reader_applies_peft_scaling(tmp_path):
    g = torch.Generator().manual_seed(5)
    pair = (torch.randn(OUT, R, generator=g), torch.randn(R, IN, generator=g))
    plain = adapter_updates(write_adapter(tmp_path / "a", {"model.layers.0.q_proj": pair}))
    assert list(plain) == ["model.layers.0.q_proj"]
    assert plain["model.layers.0.q_proj"].scaling == pytest.approx(16 / R)
    assert torch.equal(plain["model.layers.0.q_proj"].B, pair[0])
    rs = adapter_updates(write_adapter(tmp_path / "b", {"model.layers.0.q_proj": pair}, use_rslora=True,
                                       alpha_pattern={"q_proj": 4}))
    assert rs["model.layers.0.q_proj"].scaling == pytest.approx(4 / math.sqrt(R))


def test_adapter_reader_refuses_dora_and_missing_files(tmp_path):
    pair = (torch.randn(OUT, R), torch.randn(R, IN))
    with pytest.raises(AsftError, match="plain LoRA"):
        adapter_updates(write_adapter(tmp_path / "d", {"m": pair}, use_dora=True))
    with pytest.raises(AsftError, match="adapter_model.safetensors"):
        adapter_updates(str(tmp_path))


# ---------------------------------------------------------------- on the tiny sandbox (real PEFT files)

@pytest.mark.slow
def test_inspect_peft_adapter_matches_peft_own_delta(updated_sandbox, tmp_path):
    from asft.direction import load_direction
    from asft.update_inspection import inspect_update

    out = tmp_path / "inspection"
    summary = inspect_update(updated_sandbox["direction"], adapter=updated_sandbox["adapter"], out=str(out))
    V = load_direction(updated_sandbox["direction"]).vectors
    assert [row["module"] for row in summary["rows"]] == sorted(V)
    assert summary["direction_modules_not_updated"] == []
    for row in summary["rows"]:
        layer = updated_sandbox["peft_model"].base_model.model.get_submodule(row["module"])
        delta = layer.get_delta_weight("default").detach()  # PEFT's own scaling * B @ A
        expected = naive_row(delta, V[row["module"]], 8)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-4), (row["module"], key)
    assert summary["mean_orth_P"] == pytest.approx(sum(r["orth_P"] for r in summary["rows"]) / len(summary["rows"]))
    assert sorted(p.name for p in out.iterdir()) == [
        storage.OUTPUT_MARKER, "inspection.csv", "inspection.json", "inspection.md", "inspection.png"]
    assert json.loads((out / "inspection.json").read_text())["rows"] == summary["rows"]


@pytest.mark.slow
def test_inspect_full_checkpoint_on_the_plane(updated_sandbox):
    from asft.update_inspection import inspect_update

    # W_a + 0.3 V + 0.2 d_perp with ||d_perp|| = ||V|| per module: cos = 0.3 / sqrt(0.3^2 + 0.2^2)
    summary = inspect_update(updated_sandbox["direction"], checkpoint=updated_sandbox["moved"])
    assert summary["aligned"] == updated_sandbox["aligned"]  # taken from the direction's manifest
    assert [row["cosine"] for row in summary["rows"]] == pytest.approx([0.3 / math.sqrt(0.13)] * 4, abs=1e-4)


@pytest.mark.slow
def test_inspect_errors(updated_sandbox, tmp_path):
    from asft.direction import DirectionConfig, extract_direction
    from asft.update_inspection import inspect_update

    q_only = str(tmp_path / "q_only")
    extract_direction(DirectionConfig(aligned=updated_sandbox["aligned"], base=updated_sandbox["base"], out=q_only, target_modules=["q_proj"]))
    with pytest.raises(AsftError, match="v_proj.*not in the direction"):
        inspect_update(q_only, adapter=updated_sandbox["adapter"])
    with pytest.raises(AsftError, match="exactly one"):
        inspect_update(q_only, adapter=updated_sandbox["adapter"], checkpoint=updated_sandbox["moved"])


@pytest.mark.slow
def test_cli_inspect_json_and_exit_code(updated_sandbox, tmp_path):
    from cli_runner import run_cli

    done = run_cli("inspect", "--adapter", updated_sandbox["adapter"], "--direction", updated_sandbox["direction"],
                   "--out", str(tmp_path / "i"), "--top-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {"mean_along_C", "mean_orth_C", "mean_along_P", "mean_orth_P", "mean_cosine", "total_penalty", "rows", "plot"} <= summary.keys()
    assert summary["top_k"] == 2 and all(row["rank_k"] == 2 for row in summary["rows"])
    missing = run_cli("inspect", "--adapter", updated_sandbox["adapter"], "--direction", str(tmp_path / "nowhere"), "--out", str(tmp_path / "j"))
    assert missing.returncode == 2 and missing.stderr.startswith("asft: error: direction")
