"""Training: SFT vs AsFT on a tiny real Llama, manifests, PEFT output, errors, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from asft.direction import DirectionConfig, extract_direction
from asft.errors import AsftError
from asft.training import PRESETS, TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def direction(llama_pair, tmp_path_factory):
    aligned, base = llama_pair
    out = tmp_path_factory.mktemp("direction") / "d"
    extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(out)))
    return out


def config(llama_pair, train_rows, direction, out, **overrides):
    fields = dict(model=str(llama_pair[0]), data=str(train_rows), out=str(out), direction=str(direction),
                  preset="sandbox", epochs=2, batch_size=8, lr=2e-3, device="cpu")
    return TrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def sft_run(llama_pair, train_rows, direction, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "adapter"
    steps = []
    summary = train(config(llama_pair, train_rows, direction, out, method="sft"), on_step=steps.append)
    return out, summary, steps


def test_sft_writes_a_peft_adapter_manifest_and_metrics(sft_run, llama_pair, train_rows):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, summary, steps = sft_run
    manifest = json.loads((out / "train_manifest.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["adapter"] == str(out) and summary["steps"] == manifest["steps"] == 6  # 24 rows / 8 x 2 epochs
    assert metrics == steps and [m["step"] for m in metrics] == list(range(1, 7))
    assert [m["lr"] for m in metrics if m["epoch"] == 1] == pytest.approx([2e-3 * 0.85] * 3)
    assert all(m["penalty"] is not None and m["objective"] == m["loss"] for m in metrics)  # sft: logged only
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert manifest["final_loss"] == metrics[-1]["loss"] and manifest["config"]["lr"] == 2e-3
    assert "does not shuffle" in manifest["shuffle"] and manifest["data_sha256"] and manifest["model_sha256"]
    assert manifest["tokens_per_second"] > 0 and manifest["direction_sha256"]

    base = AutoModelForCausalLM.from_pretrained(llama_pair[0])
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_pair[0]), out).eval()
    saved = load_file(out / "adapter_model.safetensors")
    assert len(saved) == 8  # 2 layers x (q, v) x (A, B)
    ids = torch.tensor([[1, 5, 9, 12, 20]])
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits)


def test_asft_keeps_the_update_closer_to_the_alignment_direction(sft_run, llama_pair, train_rows, direction, tmp_path):
    _, sft_summary, sft_steps = sft_run
    asft_steps = []
    summary = train(config(llama_pair, train_rows, direction, tmp_path / "asft", method="asft", lam=10.0),
                    on_step=asft_steps.append)
    assert all(m["objective"] == pytest.approx(m["loss"] + 10.0 * m["penalty"], rel=1e-6) for m in asft_steps)
    # the anchored run ends with a much smaller orthogonal component, at a similar loss
    assert summary["final_penalty"] < 0.5 * sft_summary["final_penalty"]
    assert sum(m["penalty"] for m in asft_steps) < 0.5 * sum(m["penalty"] for m in sft_steps)
    assert summary["final_loss"] < asft_steps[0]["loss"]


def test_asft_with_zero_lambda_is_bitwise_sft(sft_run, llama_pair, train_rows, direction, tmp_path):
    out, _, sft_steps = sft_run
    train(config(llama_pair, train_rows, direction, tmp_path / "lam0", method="asft", lam=0.0))
    a, b = load_file(out / "adapter_model.safetensors"), load_file(tmp_path / "lam0" / "adapter_model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_projector_anchor_and_scaled_penalty_match_the_naive_formula(llama_pair, train_rows, direction, tmp_path):
    from asft.direction import load_direction
    from asft.regularizer import top_k_projector

    # lam 0: the penalty is computed but moves nothing, so the step-2 penalty is that of the
    # weights after one step, which a one-step run saves.
    one_step = train(config(llama_pair, train_rows, direction, tmp_path / "one", method="asft", lam=0.0, max_steps=1))
    steps = []
    train(config(llama_pair, train_rows, direction, tmp_path / "p", method="asft", lam=0.0, anchor="projector",
                 top_k=2, penalty_scaling=True, max_steps=2), on_step=steps.append)
    weights = load_file(os.path.join(one_step["adapter"], "adapter_model.safetensors"))
    lora = json.loads((tmp_path / "one" / "adapter_config.json").read_text())
    scaling = lora["lora_alpha"] / lora["r"]
    vectors = load_direction(str(direction)).vectors
    naive = 0.0
    for key, A in weights.items():
        if "lora_A" not in key:
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        B = weights[key.replace("lora_A", "lora_B")]
        U = top_k_projector(vectors[module], 2)
        update = scaling * B @ A
        naive += float((update - U @ (U.T @ update)).square().sum())
    assert naive > 0 and steps[1]["penalty"] == pytest.approx(naive, rel=1e-4)


def test_configuration_errors(llama_pair, train_rows, direction, tmp_path):
    with pytest.raises(ValidationError, match="needs direction"):
        TrainConfig(model="m", data="d", out="o", method="asft")
    with pytest.raises(ValidationError, match="data is required"):
        TrainConfig(model="m", out="o", method="sft")
    assert TrainConfig(model="m", data="d", out="o", method="sft").lr == 5e-5  # paper preset
    sandbox = TrainConfig(model="m", data="d", out="o", method="sft", preset="sandbox", lr=None, epochs=3)
    assert sandbox.lr == PRESETS["sandbox"]["lr"] and sandbox.epochs == 3

    only_q = tmp_path / "only_q"
    extract_direction(DirectionConfig(aligned=str(llama_pair[0]), base=str(llama_pair[1]), out=str(only_q),
                                      target_modules=["q_proj"]))
    with pytest.raises(AsftError, match="has no module model.layers.0.self_attn.v_proj"):
        train(config(llama_pair, train_rows, only_q, tmp_path / "x", method="asft"))
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n')
    with pytest.raises(AsftError, match="bad.jsonl:2: missing or empty answer"):
        train(config(llama_pair, bad_rows, direction, tmp_path / "x", method="sft"))
    with pytest.raises(AsftError, match="LoRA targets"):
        train(config(llama_pair, train_rows, direction, tmp_path / "x", method="sft", target_modules=["nope_proj"]))
    assert not (tmp_path / "x").exists()


def test_direction_shape_mismatch_is_an_error(llama_pair, train_rows, tmp_path):
    from transformers import LlamaForCausalLM

    config_ = LlamaForCausalLM.config_class.from_pretrained(llama_pair[0])
    config_.hidden_size, config_.num_attention_heads = 48, 4
    wide_a, wide_b = tmp_path / "wa", tmp_path / "wb"
    LlamaForCausalLM(config_).save_pretrained(wide_a)
    LlamaForCausalLM(config_).save_pretrained(wide_b)
    extract_direction(DirectionConfig(aligned=str(wide_a), base=str(wide_b), out=str(tmp_path / "wd")))
    with pytest.raises(AsftError, match="has shape"):
        train(config(llama_pair, train_rows, tmp_path / "wd", tmp_path / "x", method="asft"))


def cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [sys.executable, "-m", "asft", "train", *args], env


def test_kill_and_resume_gives_the_uninterrupted_result(llama_pair, train_rows, direction, tmp_path):
    common = ["--model", str(llama_pair[0]), "--data", str(train_rows), "--method", "asft", "--direction",
              str(direction), "--preset", "sandbox", "--epochs", "4", "--batch-size", "8", "--lr", "2e-3", "--device", "cpu", "--json"]
    cmd, env = cli(*common, "--out", str(tmp_path / "straight"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 12

    out, checkpoints = tmp_path / "resumed", tmp_path / "resumed.checkpoints"
    cmd, env = cli(*common, "--out", str(out), "--checkpoint-every", "3")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (checkpoints / "step-00000003" / "checkpoint_manifest.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists()

    cmd, env = cli(*common, "--out", str(out), "--checkpoint-every", "3", "--resume")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from step" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 12 and summary["resumed_from_step"] >= 3
    straight = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    resumed = load_file(out / "adapter_model.safetensors")
    assert sorted(straight) == sorted(resumed) and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()
    assert not checkpoints.exists()  # removed once the adapter is written


def test_resume_refuses_a_checkpoint_of_another_run(llama_pair, train_rows, direction, tmp_path):
    from asft.training.checkpoint import list_checkpoints

    first = config(llama_pair, train_rows, direction, tmp_path / "o", method="asft", checkpoint_every=2)

    def interrupt(metrics):
        if metrics["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(first, on_step=interrupt)
    assert list_checkpoints(first.checkpoints) == [2] and not (tmp_path / "o").exists()
    with pytest.raises(AsftError, match="belongs to another run .*lr"):
        train(first.model_copy(update={"lr": 1e-3, "resume": True}))
