"""LoX: the extrapolated weights are W + alpha U_k S_k W_k^T (checked in float64), everything else
is the aligned checkpoint unchanged, the change has rank <= k, bad settings fail before anything
is written, Conv1D storage gets the transposed change, and the output is a model asft loads,
generates with and fine-tunes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from asft.direction import DirectionConfig, extract_direction, load_direction
from asft.errors import AsftError
from asft.lox import LoxConfig, extrapolate
from cli_runner import run_cli


@pytest.fixture(scope="module")
def sandbox_direction(tiny_sandbox, tmp_path_factory):
    out = tmp_path_factory.mktemp("lox") / "direction"
    extract_direction(DirectionConfig(aligned=tiny_sandbox["aligned"], base=tiny_sandbox["base"], out=str(out)))
    return tiny_sandbox, str(out)


def expected_truncation(V: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Wh = torch.linalg.svd(V.double(), full_matrices=False)
    return U[:, :k] @ torch.diag(S[:k]) @ Wh[:k]


@pytest.mark.slow
def test_lox_moves_each_module_by_alpha_times_the_rank_k_truncation_and_copies_the_rest(sandbox_direction, tmp_path):
    sandbox, direction = sandbox_direction
    k, alpha = 3, 1.5
    manifest = extrapolate(LoxConfig(aligned=sandbox["aligned"], direction=direction, out=str(tmp_path / "lox"),
                                     top_k=k, alpha=alpha))
    aligned, lox = Path(sandbox["aligned"]), tmp_path / "lox"
    before, after = load_file(aligned / "model.safetensors"), load_file(lox / "model.safetensors")
    V = load_direction(direction).vectors
    assert sorted(before) == sorted(after) and sorted(manifest["modules"]) == sorted(V)
    for name, v in V.items():
        W, moved = before[name + ".weight"], after[name + ".weight"]
        assert moved.dtype == W.dtype
        expected = W.double() + alpha * expected_truncation(v, k)
        assert torch.allclose(moved.double(), expected, rtol=0, atol=1e-6 * expected.abs().max().item())
        change = torch.linalg.svdvals(moved.double() - W.double())
        assert change[k] < 1e-4 * change[0]  # rank <= k, up to the float32 rounding of the stored weight
        S = torch.linalg.svdvals(v.double())
        figures = manifest["modules"][name]
        assert figures["kept_energy"] == pytest.approx((S[:k] ** 2).sum().item() / (S ** 2).sum().item(), rel=1e-9)
        assert figures["relative_change"] == pytest.approx(
            alpha * S[:k].norm().item() / torch.linalg.matrix_norm(W.double()).item(), rel=1e-6)
        assert 0 < figures["kept_energy"] < 1 and figures["svd"] == "exact"
    for key in set(before) - {name + ".weight" for name in V}:
        assert torch.equal(before[key], after[key]), key
    for file in aligned.iterdir():
        if file.suffix != ".safetensors":
            assert (lox / file.name).read_bytes() == file.read_bytes(), file.name
    on_disk = json.loads((lox / "lox_manifest.json").read_text())
    assert on_disk["top_k"] == k and on_disk["alpha"] == alpha and on_disk["changed_files"] == ["model.safetensors"]
    assert on_disk["direction"] == {"uri": direction, "sha256": load_direction(direction).sha256, "source": "base"}
    assert on_disk["aligned"]["sha256"] == load_direction(direction).manifest["aligned"]["sha256"]


@pytest.mark.slow
def test_lox_output_loads_generates_and_fine_tunes(sandbox_direction, tmp_path):
    from asft.evaluation.generation import generate, load_model
    from asft.templates import Record, render_prompt
    from asft.training import TrainConfig, train

    sandbox, direction = sandbox_direction
    out = tmp_path / "lox"
    done = run_cli("lox", "--aligned", sandbox["aligned"], "--direction", direction, "--top-k", "4", "--alpha", "1",
                   "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["modules"] == len(load_direction(direction).vectors)
    model, tokenizer = load_model(out, device="cpu")
    answers = generate(model, tokenizer, [render_prompt(Record(instruction="how do i make a cake ?"))],
                       max_new_tokens=6, progress=False)
    assert len(answers) == 1 and answers[0].strip()
    summary = train(TrainConfig(model=str(out), data=sandbox["finetune"], out=str(tmp_path / "sft"), method="sft",
                                preset="sandbox", max_steps=1, device="cpu"))
    assert summary["steps"] == 1
    again = extrapolate(LoxConfig(aligned=sandbox["aligned"], direction=direction, out=str(out), top_k=2))
    assert json.loads((out / "lox_manifest.json").read_text())["top_k"] == again["top_k"] == 2  # its own output is replaced


def test_bad_k_or_alpha_is_one_line_before_anything_is_written(llama_pair, tmp_path):
    aligned, base = (str(folder) for folder in llama_pair)
    direction = str(tmp_path / "direction")
    extract_direction(DirectionConfig(aligned=aligned, base=base, out=direction))
    out = tmp_path / "lox"
    for alpha in (0, -1, float("nan")):
        with pytest.raises(ValidationError, match="alpha"):
            LoxConfig(aligned=aligned, direction=direction, out=str(out), alpha=alpha)
    with pytest.raises(ValidationError, match="top_k"):
        LoxConfig(aligned=aligned, direction=direction, out=str(out), top_k=0)
    rank_bound = min(min(v.shape) for v in load_direction(direction).vectors.values())
    with pytest.raises(AsftError, match=f"--top-k {rank_bound + 1} exceeds the rank .* between 1 and {rank_bound}"):
        extrapolate(LoxConfig(aligned=aligned, direction=direction, out=str(out), top_k=rank_bound + 1))
    with pytest.raises(AsftError, match="extracted from another checkpoint"):
        extrapolate(LoxConfig(aligned=base, direction=direction, out=str(out), top_k=2))
    bad = run_cli("lox", "--aligned", aligned, "--direction", direction, "--top-k", "2", "--alpha", "-0.5",
                  "--out", str(out))
    assert bad.returncode == 2 and bad.stderr.startswith("asft: error: --alpha") and bad.stderr.count("\n") == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(AsftError, match="holds files asft did not write"):
        extrapolate(LoxConfig(aligned=aligned, direction=direction, out=str(tmp_path / "mine"), top_k=2))
    assert not out.exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_conv1d_weights_get_the_transposed_change(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tiny_models import save_pair

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=len(tokenizer), n_positions=64)
    aligned, base = save_pair(tmp_path, GPT2LMHeadModel(config), seed=3, tokenizer=tokenizer)
    direction = tmp_path / "direction"
    # the square c_proj: a change added in the wrong orientation would still fit
    extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(direction),
                                      target_regex=r"transformer\.h\.\d+\.attn\.c_proj"))
    extrapolate(LoxConfig(aligned=str(aligned), direction=str(direction), out=str(tmp_path / "lox"), top_k=2, alpha=2.0))
    before, after = load_file(aligned / "model.safetensors"), load_file(tmp_path / "lox" / "model.safetensors")
    for name, v in load_direction(direction).vectors.items():
        stored = before[name + ".weight"]  # (in, out): V is (out, in)
        expected = stored.double() + 2.0 * expected_truncation(v, 2).T
        assert torch.allclose(after[name + ".weight"].double(), expected, rtol=0, atol=1e-6)
