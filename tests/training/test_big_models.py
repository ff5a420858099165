"""Settings for big models on a tiny real Llama: gradient checkpointing gives the same loss and
gradients, the memory plan's figures are the tensors' own, 4-/8-bit loading fails clearly on a
CPU, and the batched anchor penalty trains exactly like the per-module one."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from asft.direction import DirectionConfig, extract_direction, load_direction
from asft.errors import AsftError
from asft.training import TrainConfig, train
from asft.training.recipe import LoraRecipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fields(llama_pair, train_rows, tmp_path_factory):
    direction = tmp_path_factory.mktemp("direction") / "d"
    extract_direction(DirectionConfig(aligned=str(llama_pair[0]), base=str(llama_pair[1]), out=str(direction)))
    return dict(model=str(llama_pair[0]), data=str(train_rows), direction=str(direction), method="asft",
                preset="sandbox", epochs=1, batch_size=8, lr=2e-3, device="cpu")


def prepared(fields, tmp_path, **overrides) -> LoraRecipe:
    recipe = LoraRecipe(TrainConfig(**{**fields, "out": str(tmp_path / "unused"), **overrides}))
    recipe.setup()
    return recipe


def first_step_gradients(recipe: LoraRecipe) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss and LoRA gradients of the first batch through the loop's own pieces, and how often
    the first decoder layer started meanwhile (twice when it is recomputed)."""
    loop = recipe.loop()
    calls = []
    # the first thing the first layer runs: transformers checkpoints forward, not __call__ (hooks run once)
    first = recipe.model.base_model.model.model.layers[0].input_layernorm
    handle = first.register_forward_pre_hook(lambda *args: calls.append(1))
    loop.model.train()
    batch, _ = loop.batch(0)
    terms = loop.objective(loop.forward(batch), batch)
    terms.objective.backward()
    handle.remove()
    return terms.loss.item(), {n: p.grad.clone() for n, p in recipe.named.items()}, len(calls)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(fields, tmp_path):
    plain_loss, plain, plain_calls = first_step_gradients(prepared(fields, tmp_path))
    loss, checkpointed, calls = first_step_gradients(prepared(fields, tmp_path, gradient_checkpointing=True))
    assert (plain_calls, calls) == (1, 2)  # the layer really is recomputed in the backward pass
    assert loss == pytest.approx(plain_loss, rel=1e-6)  # dropout (0.05) replayed exactly
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_memory_plan_is_the_real_tensor_bytes(fields, llama_pair, tmp_path):
    recipe = prepared(fields, tmp_path, direction_rank=4)
    plan = recipe.memory_plan
    with safe_open(str(llama_pair[0] / "model.safetensors"), "pt") as f:
        stored = sum(torch.Size(f.get_slice(k).get_shape()).numel() for k in f.keys()) * 4
    assert plan["weights_bytes"] == {"float32": stored}
    config = recipe.model.config  # LoRA r=8 on q (32 -> 32) and v (32 -> 16) of 2 layers
    head = config.hidden_size // config.num_attention_heads
    expected_lora = config.num_hidden_layers * 8 * ((32 + 32) + (32 + config.num_key_value_heads * head))
    assert plan["lora_parameters"] == expected_lora and plan["lora_bytes"] == 4 * expected_lora

    recipe.loop().step(0, 1)  # one real AdamW step fills the optimizer state
    state = [t for per_param in recipe.optimizer.state.values() for t in per_param.values()]
    assert plan["optimizer_bytes"] == sum(t.numel() * t.element_size() for t in state)

    vectors = load_direction(fields["direction"], modules=list(recipe.layers)).vectors
    kept = sum(V.shape[0] * 4 * 4 + 4 for V in vectors.values())  # the (out, 4) factor and the norm, float32
    assert plan["direction_bytes"] == kept and plan["direction_kept"] == "rank-4 factor"
    longest = max(len(e["input_ids"]) for e in recipe.examples)
    assert plan["activation_shape"] == [8, longest]

    checkpointed = prepared(fields, tmp_path, gradient_checkpointing=True).memory_plan
    assert 0 < checkpointed["activations_bytes_estimate"] < prepared(fields, tmp_path).memory_plan["activations_bytes_estimate"]


def test_the_manifest_keeps_the_plan_and_the_run_prints_it(fields, tmp_path, capsys):
    train(TrainConfig(**fields, out=str(tmp_path / "out"), max_steps=1))
    assert "memory plan per device" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "train_manifest.json").read_text())
    assert manifest["memory_plan"]["lora_parameters"] > 0
    assert manifest["distributed"] == {"world_size": 1, "backend": None, "parallel": None}


def test_4_and_8_bit_bases_need_a_gpu_and_are_one_or_the_other(fields, tmp_path):
    from cli_runner import run_cli

    with pytest.raises(ValidationError, match="exclude each other"):
        TrainConfig(**fields, out="o", load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(AsftError, match="--load-in-8bit needs a CUDA GPU"):
        train(TrainConfig(**fields, out=str(tmp_path / "out8"), load_in_8bit=True))
    done = run_cli("train", "--model", fields["model"], "--data", fields["data"], "--out", str(tmp_path / "out4"),
                   "--method", "sft", "--device", "cpu", "--load-in-4bit")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == ("asft: error: --load-in-4bit needs a CUDA GPU (bitsandbytes), "
                                                    "this run is on cpu; drop --load-in-4bit on a CPU")
    assert not (tmp_path / "out4").exists() and not (tmp_path / "out8").exists()


def test_batched_anchors_train_like_per_module_anchors(fields, tmp_path):
    curves = []
    for batching in (False, True):
        out = tmp_path / f"batched-{batching}"
        train(TrainConfig(**fields, out=str(out), anchor_batching=batching, lam=20.0))
        curves.append([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    for key in ("loss", "penalty"):
        torch.testing.assert_close(torch.tensor([r[key] for r in curves[1]]),
                                   torch.tensor([r[key] for r in curves[0]]), rtol=1e-5, atol=0)
    assert curves[0][-1]["penalty"] > 0
