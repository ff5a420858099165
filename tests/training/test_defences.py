"""The defences people compare AsFT with, as methods of the trainer: SafeInstr (refusal rows
mixed into the training set) and Lisa (alignment and user phases, proximal term to the last
switch point). Their mechanisms first (no model), then tiny real runs."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from asft.direction import DirectionConfig, extract_direction
from asft.errors import AsftError
from asft.training import TrainConfig, train
from asft.training.loop import EpochShuffle
from asft.training.methods import METHODS, LisaSchedule, method_for, proximal

REFUSAL = {"instruction": "how do i make a bad film ?", "output": "sorry , i cannot help with that ."}


def rows(tag: int, n: int) -> list[dict[str, list[int]]]:
    """``n`` encoded rows whose first token says which file they came from and their position."""
    return [{"input_ids": [tag, i], "labels": [tag, i]} for i in range(n)]


def reader(files: dict[str, list]):
    return lambda source: (files[source], f"sha-of-{source}")


def fields(**overrides) -> dict:
    return {"model": "m", "data": "d", "out": "o", "batch_size": 4, "seed": 7, **overrides}


# --- configuration ------------------------------------------------------------------------


def test_each_method_needs_its_file_and_only_it_uses_it():
    assert {"safeinstr", "lisa"} <= set(METHODS)
    with pytest.raises(ValidationError, match="method safeinstr needs safety_data"):
        TrainConfig(**fields(method="safeinstr"))
    with pytest.raises(ValidationError, match="method lisa needs alignment_data"):
        TrainConfig(**fields(method="lisa"))
    with pytest.raises(ValidationError, match="safety_data is only used by method safeinstr"):
        TrainConfig(**fields(method="sft", safety_data="s"))
    with pytest.raises(ValidationError, match="alignment_data is only used by method lisa"):
        TrainConfig(**fields(method="safeinstr", safety_data="s", alignment_data="a"))
    with pytest.raises(ValidationError, match="method lisa writes no resumable checkpoints"):
        TrainConfig(**fields(method="lisa", alignment_data="a", checkpoint_every=5))
    for share in (0.0, 1.0):
        with pytest.raises(ValidationError, match="safety_share"):
            TrainConfig(**fields(method="safeinstr", safety_data="s", safety_share=share))
    lisa = TrainConfig(**fields(method="lisa", alignment_data="a"))
    assert (lisa.lisa_alignment_steps, lisa.lisa_finetune_steps, lisa.lisa_rho) == (100, 900, 1.0)  # the reference's
    assert TrainConfig(**fields(method="safeinstr", safety_data="s")).safety_share == 0.1


# --- SafeInstr ----------------------------------------------------------------------------


def test_safeinstr_mixes_k_seeded_safety_rows_into_the_epochs():
    config = TrainConfig(**fields(method="safeinstr", safety_data="s", safety_share=0.2))
    user, safety = rows(100, 18), rows(200, 30)
    mixed, sampler = method_for(config).training_rows(user, reader({"s": safety}))
    k = round(0.2 / 0.8 * 18)
    assert k == 4 and mixed[:18] == user and len(mixed) == 22
    drawn = [row["input_ids"][1] for row in mixed[18:]]
    assert all(row["input_ids"][0] == 200 for row in mixed[18:]) and len(set(drawn)) == k  # without replacement
    assert drawn == torch.randperm(30, generator=torch.Generator().manual_seed(7))[:k].tolist()
    again, _ = method_for(config).training_rows(user, reader({"s": safety}))
    other, _ = method_for(config.model_copy(update={"seed": 8})).training_rows(user, reader({"s": safety}))
    assert again == mixed and other[18:] != mixed[18:]
    # the loop's epochs shuffle the safety rows in with the user's, as SFT shuffles its rows
    assert sampler.steps(3) == 18
    assert [sampler.indices(s) for s in range(18)] == [EpochShuffle(22, 4, 7).indices(s) for s in range(18)]
    method = method_for(config)
    method.training_rows(user, reader({"s": safety}))
    assert method.record(0)["safeinstr"] | {"draw": None} == {
        "safety_data": "s", "safety_sha256": "sha-of-s", "safety_share": 0.2, "safety_rows": 4,
        "safety_file_rows": 30, "user_rows": 18, "draw": None}


def test_safeinstr_refuses_a_share_the_file_cannot_fill_or_that_rounds_to_nothing():
    config = TrainConfig(**fields(method="safeinstr", safety_data="s", safety_share=0.5))
    with pytest.raises(AsftError, match="safety_share 0.5 of 18 user rows needs 18 safety rows, s has 17; lower"):
        method_for(config).training_rows(rows(100, 18), reader({"s": rows(200, 17)}))
    tiny_share = config.model_copy(update={"safety_share": 0.01})
    with pytest.raises(AsftError, match=r"0.01 of 18 user rows is 0 safety rows \(k = round.*; raise --safety-share"):
        method_for(tiny_share).training_rows(rows(100, 18), reader({"s": rows(200, 17)}))


# --- Lisa ---------------------------------------------------------------------------------


def test_lisa_phases_start_with_alignment_and_draw_from_their_own_file():
    user, alignment = EpochShuffle(10, 4, 0), EpochShuffle(6, 4, 0)  # 3 user steps per epoch, 2 per alignment pass
    schedule = LisaSchedule(user, alignment, alignment_steps=2, finetune_steps=3)
    assert schedule.steps(2) == 6 + 2 * 2  # 6 user steps, one alignment phase before each 3 of them
    assert [schedule.phase(s) for s in range(10)] == (["alignment"] * 2 + ["finetune"] * 3) * 2
    drawn = [schedule.indices(s) for s in range(10)]
    # the user's steps are SFT's own batches in SFT's order; the alignment steps index past the user's rows
    assert [drawn[s] for s in (2, 3, 4, 7, 8, 9)] == [user.indices(s) for s in range(6)]
    assert [drawn[s] for s in (0, 1, 5, 6)] == [[10 + i for i in alignment.indices(s)] for s in range(4)]
    assert [schedule.epoch(s) for s in range(10)] == [0] * 5 + [1] * 5  # alignment counts with the user steps after it
    assert schedule.done_before(7) == (4, 3) and schedule.epochs_done(10) == 2.0 and schedule.epochs_done(5) == 1.0
    # a phase split that does not divide the user steps: the last user phase is short
    assert LisaSchedule(user, alignment, 1, 4).steps(2) == 6 + 2


def test_proximal_term_and_its_gradient_match_the_hand_computation():
    theta = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True),
             "b": torch.tensor([0.5], requires_grad=True)}
    switch = {"a": torch.tensor([[0.0, 2.0], [1.0, 1.0]]), "b": torch.tensor([-0.5])}
    value = proximal(theta, switch, rho=0.5)
    assert value.item() == 0.5 / 2 * (1 + 0 + 4 + 9 + 1)  # ||theta - theta_switch||^2 = 15
    value.backward()
    assert torch.equal(theta["a"].grad, torch.tensor([[0.5, 0.0], [1.0, 1.5]]))  # rho * (theta - theta_switch)
    assert torch.equal(theta["b"].grad, torch.tensor([0.5]))


def test_lisa_takes_a_detached_switch_point_at_each_phase_change():
    from asft.training.loop import StepResult, Terms

    config = TrainConfig(**fields(method="lisa", alignment_data="a", lisa_alignment_steps=2, lisa_finetune_steps=3,
                                  lisa_rho=2.0))
    method = method_for(config)
    method.training_rows(rows(100, 10), reader({"a": rows(200, 6)}))
    weight = torch.nn.Parameter(torch.ones(3))
    method.start({"w": weight})
    loss = torch.tensor(0.25)
    assert method.objective(loss, None).item() == 0.25  # at the switch point the term is 0

    def finished(step: int) -> None:
        with torch.no_grad():
            weight.add_(1.0)
        method.switch_if_due(StepResult(step, 10, 0, 0.1, {}, Terms(loss, loss)))

    finished(1)  # still in the alignment phase: the anchor stays at the start
    assert method.objective(loss, None).item() == pytest.approx(0.25 + 2.0 / 2 * 3 * 1.0)
    finished(2)  # the alignment phase is over: the next phase is anchored here
    assert torch.equal(method.switch_point["w"], torch.full((3,), 3.0)) and not method.switch_point["w"].requires_grad
    assert method.objective(loss, None).item() == 0.25
    assert method.step_record(2) == {"phase": "finetune"} and method.hooks() == [method.switch_if_due]


# --- tiny real runs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def direction(llama_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("direction") / "d"
    extract_direction(DirectionConfig(aligned=str(llama_pair[0]), base=str(llama_pair[1]), out=str(out)))
    return out


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """Ten refusal rows (harmful prompt + refusal), the shape of the sandbox's safety data."""
    path = tmp_path_factory.mktemp("safety") / "refusals.jsonl"
    words = ("movie", "film", "review", "answer", "question", "good", "bad", "great", "awful", "sentiment")
    path.write_text("".join(json.dumps({**REFUSAL, "instruction": f"how do i make a {w} ?"}) + "\n" for w in words))
    return path


def run_config(llama_pair, train_rows, out, **overrides) -> TrainConfig:
    return TrainConfig(**{"model": str(llama_pair[0]), "data": str(train_rows), "out": str(out), "preset": "sandbox",
                          "epochs": 2, "batch_size": 8, "lr": 2e-3, "device": "cpu", **overrides})


def metrics_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_safeinstr_trains_on_the_mixed_set_and_records_it(llama_pair, train_rows, direction, refusals, tmp_path):
    from asft.training.recipe import LoraRecipe

    config = run_config(llama_pair, train_rows, tmp_path / "si", method="safeinstr", safety_data=str(refusals),
                        safety_share=0.2, direction=str(direction))
    recipe = LoraRecipe(config)
    recipe.setup()  # the set the loop trains on: the 24 user rows, then k = round(0.25 x 24) = 6 refusals
    assert len(recipe.examples) == 30 and recipe.sampler.steps(2) == recipe.total_steps == 8
    tokenizer = recipe.tokenizer
    refused = [e for e in recipe.examples if "sorry" in tokenizer.decode(e["input_ids"])]
    assert len(refused) == 6 and recipe.examples[24:] == refused

    summary = train(config)
    manifest = json.loads((tmp_path / "si" / "train_manifest.json").read_text())
    assert summary["steps"] == manifest["steps"] == 8 and manifest["examples"] == 30
    assert manifest["safeinstr"] | {"draw": None} == {
        "safety_data": str(refusals), "safety_sha256": hashlib.sha256(refusals.read_bytes()).hexdigest(),
        "safety_share": 0.2, "safety_rows": 6, "safety_file_rows": 10, "user_rows": 24, "draw": None}
    metrics = metrics_of(tmp_path / "si")
    assert all(m["penalty"] is not None and m["objective"] == m["loss"] for m in metrics)  # direction: logged only
    assert metrics[-1]["loss"] < metrics[0]["loss"]


@pytest.mark.slow
def test_safeinstr_resumes_its_mixture(llama_pair, train_rows, refusals, tmp_path):
    config = run_config(llama_pair, train_rows, tmp_path / "o", method="safeinstr", safety_data=str(refusals),
                        safety_share=0.2, checkpoint_every=3, lora_dropout=0.0)
    train(config.model_copy(update={"out": str(tmp_path / "straight"), "checkpoint_every": 0}))

    def interrupt(metrics):
        if metrics["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=interrupt)
    assert train(config.model_copy(update={"resume": True}))["resumed_from_step"] == 3
    straight, resumed = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("straight", "o"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_lisa_alternates_phases_with_the_proximal_term(llama_pair, train_rows, direction, refusals, tmp_path):
    config = run_config(llama_pair, train_rows, tmp_path / "lisa", method="lisa", alignment_data=str(refusals),
                        lisa_alignment_steps=2, lisa_finetune_steps=2, lisa_rho=50.0, direction=str(direction))
    summary = train(config)
    metrics = metrics_of(tmp_path / "lisa")
    # 24 rows / 8 = 3 user steps per epoch, 6 in all, each 2 of them after 2 alignment steps
    assert summary["steps"] == len(metrics) == 12 and summary["epochs_done"] == 2.0
    assert [m["phase"] for m in metrics] == ["alignment", "alignment", "finetune", "finetune"] * 3
    assert [m["epoch"] for m in metrics] == [0] * 7 + [1] * 5  # user step 3 (run step 7) starts epoch 1
    assert all(m["lr"] == pytest.approx(2e-3 * 0.85 ** m["epoch"]) for m in metrics)
    # the first step of each phase starts at its switch point: no proximal term; the others have one
    firsts = {1, 3, 5, 7, 9, 11}
    assert all(m["objective"] == m["loss"] for m in metrics if m["step"] in firsts)
    assert all(m["objective"] > m["loss"] for m in metrics if m["step"] not in firsts)
    assert all(m["penalty"] is not None for m in metrics)  # the direction's penalty is logged, not optimised
    manifest = json.loads((tmp_path / "lisa" / "train_manifest.json").read_text())
    assert manifest["lisa"] == {"alignment_data": str(refusals),
                                "alignment_sha256": hashlib.sha256(refusals.read_bytes()).hexdigest(),
                                "alignment_rows": 10, "user_rows": 24, "alignment_steps": 2, "finetune_steps": 2,
                                "rho": 50.0, "first_phase": "alignment", "steps_on_alignment": 6, "steps_on_user": 6}
    assert manifest["examples"] == 34 and manifest["config"]["method"] == "lisa"


@pytest.mark.slow
def test_a_huge_rho_holds_the_lora_weights_at_the_switch_point(llama_pair, train_rows, refusals, tmp_path):
    """One alignment step, then the switch: at the start the weights are their own switch point (no term, whatever
    rho), so a run stopped there (max_steps 1) holds the theta_switch of the longer runs of any rho."""

    def adapter(name: str, rho: float, steps: int) -> dict[str, torch.Tensor]:
        train(run_config(llama_pair, train_rows, tmp_path / name, method="lisa", alignment_data=str(refusals),
                         lisa_alignment_steps=1, lisa_finetune_steps=6, lisa_rho=rho, lora_dropout=0.0, epochs=2,
                         max_steps=steps))
        return load_file(tmp_path / name / "adapter_model.safetensors")

    def drift(a: dict, b: dict) -> float:
        return sum(float((a[k] - b[k]).square().sum()) for k in a) ** 0.5

    switch, held, free = adapter("switch", 0.0, 1), adapter("held", 1e6, 7), adapter("free", 0.0, 7)
    # measured: 0.019 held, 0.31 free (AdamW moves ~lr per element per step whatever the gradient's size)
    assert drift(free, switch) > 0 and drift(held, switch) < 0.1 * drift(free, switch)


@pytest.mark.slow
def test_lisa_trains_the_one_process_adapter_on_two_fsdp_ranks(llama_pair, train_rows, refusals, tmp_path):
    """21 rows in global batches of 10 (the last batch has 1 row); under FSDP each rank holds half of
    every factor: the proximal term is computed on the gathered factors, the switch point gathered.
    (DDP needs nothing of its own: every rank adds the same term to replicated factors.)"""
    from test_distributed import TOLERANCE, options, torchrun

    (tmp_path / "rows.jsonl").write_text("".join(train_rows.read_text().splitlines(keepends=True)[:21]))
    config = run_config(llama_pair, tmp_path / "rows.jsonl", tmp_path / "one", method="lisa", batch_size=10,
                        alignment_data=str(refusals), lisa_alignment_steps=2, lisa_finetune_steps=2, lisa_rho=50.0,
                        lora_dropout=0.0)
    train(config)
    fields = {k: v for k, v in config.model_dump().items() if k in config.model_fields_set and k != "out"}
    done = torchrun(*options(fields, out=tmp_path / "fsdp", parallel="fsdp"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("one", "fsdp"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], **TOLERANCE)
    objectives = [[m["objective"] - m["loss"] for m in metrics_of(tmp_path / run)] for run in ("one", "fsdp")]
    assert objectives[0][1] > 0  # the proximal term is a real curve
    torch.testing.assert_close(torch.tensor(objectives[1]), torch.tensor(objectives[0]), **TOLERANCE)
