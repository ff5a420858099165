"""The GPU-pool side of the flows: training on N GPUs under torchrun, and one evaluation
mapped over prompt shards as Prefect tasks and merged."""

from __future__ import annotations

import json
import sys

import pytest

from asft.errors import AsftError
from asft.training import TrainConfig

pytestmark = pytest.mark.slow


def task_run_names(flow_run_id) -> list[str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return [run.name.rsplit("-", 1)[0] for run in asyncio.run(read())]


def test_a_failed_torchrun_run_is_one_line_with_the_processes_error(tmp_path, capsys):
    """Two real processes under ``python -m torch.distributed.run``; both refuse the missing model."""
    from flows.gpu import train_on_gpus

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n")
    config = TrainConfig(model=str(tmp_path / "no-model"), data=str(data), method="sft", out=str(tmp_path / "adapter"))
    with pytest.raises(AsftError) as caught:
        train_on_gpus(config, 2)
    assert str(caught.value) == (f"training under torchrun (2 processes) exited with status 1: "
                                 f"asft: error: {tmp_path / 'no-model'}: no such file or folder; check the path")
    launched = capsys.readouterr().out
    assert f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2 -m asft train --config " in launched
    assert not (tmp_path / "adapter").exists()
    with pytest.raises(AsftError, match="num_gpus 0: give 1 or more GPUs"):
        train_on_gpus(config, 0)


def test_sharded_evaluation_maps_over_shards_and_merges_into_the_whole_report(tiny_sandbox, prefect_server, tmp_path):
    from prefect import flow

    from flows import steps

    def settings(out: str) -> dict:
        return {"model": tiny_sandbox["aligned"], "harmful": tiny_sandbox["harmful_eval"],
                "over_refusal": tiny_sandbox["benign_eval"], "utility": tiny_sandbox["utility_eval"], "out": out,
                "limit": 6, "max_new_tokens": 8, "batch_size": 4, "device": "cpu", "progress": False}

    @flow
    def whole_and_sharded() -> tuple[dict, dict]:
        return (steps.evaluate(settings(str(tmp_path / "whole")), None),
                steps.evaluate(settings(str(tmp_path / "sharded")), None, 3))

    state = whole_and_sharded(return_state=True)
    whole, sharded = state.result()
    untimed = ("timings", "report", "samples")
    assert {k: v for k, v in sharded.items() if k not in untimed} == {k: v for k, v in whole.items() if k not in untimed}
    assert sharded["harmful_total"] == 6 and len(sharded["timings"]["shards"]) == 3
    assert sorted(task_run_names(state.state_details.flow_run_id)) == ["evaluate", "evaluate", *["evaluate shard"] * 3]
    assert (tmp_path / "sharded-shards" / "2-of-3" / "report.json").exists()


def test_two_gloo_processes_under_the_launcher_train_the_one_process_adapter(tmp_path):
    """The GPU deployment's num_gpus > 1 path, on the CPU: torchrun, 2 gloo ranks, the same
    global batch; the config reaches the ranks intact (the same adapter, to float32 rounding)."""
    import torch
    from safetensors.torch import load_file

    from asft.training import train
    from benchmarks.training_workspace import build, shapes_for
    from flows.gpu import train_on_gpus

    cpu = torch.device("cpu")
    fields = {**build(tmp_path, shapes_for("tiny", cpu), cpu), "method": "asft"}
    two = train_on_gpus(TrainConfig(**fields, out=str(tmp_path / "two")), 2)
    one = train(TrainConfig(**fields, out=str(tmp_path / "one")))
    assert two["adapter"] == str(tmp_path / "two") and two["steps"] == one["steps"] == 4
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)
    weights = [load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-6)
