"""AsFTAlt's direction, learned from a small harmful set when there is no base: V is the measured
weight change W_aligned - W_harmful of the recorded harmful tuning, the folder is the ordinary
direction format (the loader, AsFT training and Safe LoRA take it), the same seed gives the same
bytes, and bad input fails in one line before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asft import storage
from asft.direction import DirectionConfig, extract_direction, load_direction
from asft.errors import AsftError
from cli_runner import run_cli

STEPS = 3


@pytest.fixture(scope="module")
def harmful_rows(tiny_sandbox, tmp_path_factory):
    """The harmful rows of the sandbox's fine-tuning mixture (harmful prompts with compliant answers)."""
    rows = [json.loads(line) for line in Path(tiny_sandbox["finetune"]).read_text().splitlines()]
    indices = json.loads(Path(tiny_sandbox["finetune_labels"]).read_text())["harmful_indices"]
    path = tmp_path_factory.mktemp("harmful") / "harmful.jsonl"
    path.write_text("".join(json.dumps(rows[i]) + "\n" for i in indices))
    return str(path)


def learn(sandbox, harmful, out, **settings):
    return extract_direction(DirectionConfig(aligned=sandbox["aligned"], harmful_data=harmful, out=str(out),
                                             harmful_steps=STEPS, harmful_preset="sandbox", **settings))


@pytest.fixture(scope="module")
def learned(tiny_sandbox, harmful_rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("alt") / "direction"
    return learn(tiny_sandbox, harmful_rows, out), str(out)


@pytest.mark.slow
def test_v_is_the_measured_weight_change_of_the_recorded_harmful_tuning(tiny_sandbox, harmful_rows, learned, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from asft.training import PRESETS, TrainConfig, train

    manifest, folder = learned
    assert manifest["source"] == "harmful-data" and "base" not in manifest
    assert manifest["harmful_data"] == {"uri": harmful_rows, "sha256": storage.sha256_file(harmful_rows),
                                        "rows": len(Path(harmful_rows).read_text().splitlines())}
    tuning = manifest["harmful_tuning"]
    assert (tuning["steps"], tuning["seed"], tuning["lr"], tuning["lora_r"]) == (STEPS, 42, PRESETS["sandbox"]["lr"], 8)
    # the harmful model again, from what the manifest records, merged by peft itself
    adapter = tmp_path / "harmful"
    train(TrainConfig(model=tiny_sandbox["aligned"], data=harmful_rows, out=str(adapter), method="sft",
                      preset=tuning["preset"], lr=tuning["lr"], lr_decay=1.0, epochs=1000, max_steps=tuning["steps"],
                      seed=tuning["seed"], lora_r=tuning["lora_r"], lora_alpha=tuning["lora_alpha"]))
    aligned = AutoModelForCausalLM.from_pretrained(tiny_sandbox["aligned"])
    W_aligned = {n: p.detach().clone() for n, p in aligned.named_parameters()}
    harmful = PeftModel.from_pretrained(aligned, adapter).merge_and_unload()
    W_harmful = dict(harmful.named_parameters())
    direction = load_direction(folder)
    assert sorted(direction.vectors) == manifest["modules"] and len(manifest["modules"]) == 4  # q, v of 2 layers
    for name, V in direction.vectors.items():
        measured = W_aligned[name + ".weight"] - W_harmful[name + ".weight"].detach()
        assert measured.abs().max() > 1e-3  # the tuning moved the weight
        torch.testing.assert_close(V, measured, rtol=0, atol=1e-6)
        assert manifest["ranks"][name] == torch.linalg.matrix_rank(V).item() == 8
        assert manifest["frobenius_norms"][name] == pytest.approx(torch.linalg.matrix_norm(V).item(), rel=1e-6)
    assert manifest["weight_layout"] == "out_in" and manifest["transposed_modules"] == []


@pytest.mark.slow
def test_same_seed_same_bytes_another_seed_another_direction(tiny_sandbox, harmful_rows, learned, tmp_path):
    manifest, folder = learned
    again = learn(tiny_sandbox, harmful_rows, tmp_path / "again")
    assert (tmp_path / "again" / "direction.safetensors").read_bytes() == (
        storage.local_path(folder) / "direction.safetensors").read_bytes()
    assert again["direction_sha256"] == manifest["direction_sha256"]
    other = learn(tiny_sandbox, harmful_rows, tmp_path / "other", harmful_seed=7)
    assert other["direction_sha256"] != manifest["direction_sha256"] and other["harmful_tuning"]["seed"] == 7


@pytest.mark.slow
def test_asft_and_safe_lora_use_the_learned_direction_unchanged(tiny_sandbox, learned, tmp_path):
    from asft.training import TrainConfig, train

    manifest, folder = learned
    asft = train(TrainConfig(model=tiny_sandbox["aligned"], data=tiny_sandbox["finetune"], out=str(tmp_path / "asft"),
                             method="asft", direction=folder, preset="sandbox", max_steps=2))
    assert asft["direction_sha256"] == manifest["direction_sha256"] and asft["final_penalty"] > 0
    metrics = [json.loads(line) for line in (tmp_path / "asft" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["objective"] == pytest.approx(row["loss"] + row["penalty"], rel=1e-5) for row in metrics)
    projected = train(TrainConfig(model=tiny_sandbox["aligned"], adapter=str(tmp_path / "asft"), method="safelora",
                                  direction=folder, out=str(tmp_path / "safelora"), safelora_mode="number", safelora_k=1))
    assert projected["safelora_projected"] == 1
    before = load_file(tmp_path / "asft" / "adapter_model.safetensors")
    after = load_file(tmp_path / "safelora" / "adapter_model.safetensors")
    assert sum(not torch.equal(before[k], after[k]) for k in before) == 1  # one lora_B replaced by C B


def test_bad_harmful_input_is_one_line_before_training(llama_pair, tmp_path):
    aligned = str(llama_pair[0])
    with pytest.raises(AsftError, match="nowhere.jsonl: no such file"):
        extract_direction(DirectionConfig(aligned=aligned, harmful_data=str(tmp_path / "nowhere.jsonl"),
                                          out=str(tmp_path / "d")))
    done = run_cli("direction", "--aligned", aligned, "--harmful-data", str(tmp_path / "nowhere.jsonl"),
                   "--out", str(tmp_path / "d"))
    assert done.returncode == 2 and done.stderr.startswith("asft: error: ") and done.stderr.count("\n") == 1
    assert "nowhere.jsonl: no such file" in done.stderr
    assert not (tmp_path / "d").exists()
