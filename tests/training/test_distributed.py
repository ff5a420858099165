"""Data-parallel training under the real launcher: ``torchrun`` starts 2 gloo processes on the
CPU; with the same global batch they train the adapter one process trains (to float32
rounding), log the same loss and penalty curves, and resume a checkpoint with both ranks; with
FSDP2 (each rank holds half the weights, the penalty computed on the gathered factors) too."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from asft.direction import DirectionConfig, extract_direction
from asft.errors import AsftError
from asft.training import TrainConfig, train
from asft.training.distributed import World, check_batch, check_parallel, label_tokens, share

# 2 ranks sum the same float32 terms in another order (the gloo all-reduce of the gradients)
TOLERANCE = dict(rtol=1e-4, atol=1e-6)


def test_each_rank_takes_a_contiguous_share_of_the_global_batch():
    batch = list(range(7))
    shares = [share(batch, World(rank, 3)) for rank in range(3)]
    assert sum(shares, []) == batch and [len(s) for s in shares] == [2, 2, 3]
    assert share([5], World(0, 2)) == [] and share([5], World(1, 2)) == [5]
    assert share(batch, World()) == batch


def test_the_global_batch_must_split_evenly_over_the_ranks():
    check_batch(8, World(0, 2))
    with pytest.raises(AsftError, match="batch_size 9 is the global batch .* 2 training processes; use --batch-size 8"):
        check_batch(9, World(1, 2))


def test_fsdp_refuses_what_it_cannot_do_before_any_model_loads():
    fields = dict(model="m", data="d", out="o", method="sft", parallel="fsdp")
    check_parallel(TrainConfig(**fields, checkpoint_every=2), World())  # one process: fsdp means nothing
    with pytest.raises(AsftError, match="--parallel fsdp writes no resumable checkpoints yet"):
        check_parallel(TrainConfig(**fields, checkpoint_every=2), World(0, 2))
    with pytest.raises(AsftError, match="--parallel fsdp does not shard 4-/8-bit weights"):
        check_parallel(TrainConfig(**fields, load_in_4bit=True), World(1, 2))


def test_label_tokens_are_those_the_shifted_causal_loss_averages():
    from transformers.loss.loss_utils import ForCausalLMLoss

    example = {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]}
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([example["labels"]])
    mean = ForCausalLMLoss(logits, labels, vocab_size=7)
    summed = ForCausalLMLoss(logits, labels, vocab_size=7, num_items_in_batch=1)
    assert label_tokens(example) == 3 and torch.allclose(summed / label_tokens(example), mean)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "asft", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def setup(llama_pair, train_rows, tmp_path_factory):
    """21 rows in global batches of 10: the last batch has 1 row, so rank 0 gets none there."""
    root = tmp_path_factory.mktemp("ddp")
    extract_direction(DirectionConfig(aligned=str(llama_pair[0]), base=str(llama_pair[1]), out=str(root / "direction")))
    rows = train_rows.read_text().splitlines(keepends=True)[:21]
    (root / "rows.jsonl").write_text("".join(rows))
    fields = dict(model=str(llama_pair[0]), data=str(root / "rows.jsonl"), direction=str(root / "direction"),
                  method="asft", lam=20.0, preset="sandbox", epochs=2, batch_size=10, lr=2e-3, lora_dropout=0.0,
                  device="cpu")
    return root, fields


def options(fields: dict, **more) -> list[str]:
    """``asft train`` options for these fields (True is a flag)."""
    args = ["--json"]
    for key, value in {**fields, **more}.items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return args


@pytest.mark.slow
def test_two_gloo_ranks_train_the_one_process_adapter_and_resume_together(setup):
    root, fields = setup
    one = train(TrainConfig(**fields, out=str(root / "one")))

    done = torchrun(*options(fields, out=root / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # printed once, by rank 0
    assert summary["steps"] == one["steps"] == 6
    assert done.stderr.count("memory plan per device") == 1
    manifest = json.loads((root / "two" / "train_manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "backend": "gloo", "parallel": "ddp"}
    assert manifest["memory_plan"]["activation_shape"][0] == 5  # each rank's share of the batch
    assert sorted(p.name for p in (root / "two").iterdir()) == sorted(p.name for p in (root / "one").iterdir())
    single, double = load_file(root / "one" / "adapter_model.safetensors"), load_file(root / "two" / "adapter_model.safetensors")
    assert sorted(single) == sorted(double)
    for name in single:
        torch.testing.assert_close(double[name], single[name], **TOLERANCE)
    curves = [[json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("one", "two")]
    for key in ("loss", "penalty", "objective"):
        torch.testing.assert_close(torch.tensor([r[key] for r in curves[1]]), torch.tensor([r[key] for r in curves[0]]),
                                   **TOLERANCE)
    assert curves[0][-1]["penalty"] > 0  # the penalty curve is a real curve

    # a checkpoint of step 4 (written by one process, stopped there) resumed by both ranks
    class Stop(Exception):
        pass

    def stop_after_4(row):  # the checkpoint of a step is written after its metrics row
        if row["step"] == 5:
            raise Stop

    resumable = dict(fields, out=str(root / "resumed"), checkpoint_every=2)
    with pytest.raises(Stop):
        train(TrainConfig(**resumable), on_step=stop_after_4)
    done = torchrun(*options(resumable, resume=True))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resuming from step 4") == 2  # every rank loaded it
    assert json.loads(done.stdout)["resumed_from_step"] == 4
    resumed = load_file(root / "resumed" / "adapter_model.safetensors")
    for name in single:
        torch.testing.assert_close(resumed[name], double[name], **TOLERANCE)
    assert not (root / "resumed.checkpoints").exists()


@pytest.mark.slow
def test_fsdp_ranks_hold_half_the_weights_and_train_the_one_process_adapter(setup):
    root, fields = setup
    one = root / "one-fsdp-reference"
    train(TrainConfig(**fields, out=str(one)))
    done = torchrun(*options(fields, out=root / "fsdp", parallel="fsdp"))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((root / "fsdp" / "train_manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "backend": "gloo", "parallel": "fsdp"}
    single_plan = json.loads((one / "train_manifest.json").read_text())["memory_plan"]
    assert 2 * manifest["memory_plan"]["lora_parameters"] == single_plan["lora_parameters"]  # sharded
    assert 2 * manifest["memory_plan"]["weights_bytes"]["float32"] == single_plan["weights_bytes"]["float32"]
    single, sharded = load_file(one / "adapter_model.safetensors"), load_file(root / "fsdp" / "adapter_model.safetensors")
    assert sorted(single) == sorted(sharded)  # gathered whole before rank 0 wrote them
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], **TOLERANCE)
    curves = [[json.loads(line)["penalty"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
              for folder in (one, root / "fsdp")]
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), **TOLERANCE)
