"""The recipe's pieces without a real model: the shared loop equals a hand-written optimizer
loop bit for bit, resumes at any step, feeds its hooks; the epoch order; the methods."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from asft.training.config import TrainConfig
from asft.training.loop import EpochShuffle, Loop, Terms
from asft.training.methods import METHODS, method_for


class Tiny(torch.nn.Module):
    """A model in the shape the loop expects: ``model(**batch).loss``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(11, 4)
        self.head = torch.nn.Linear(4, 11)

    def forward(self, input_ids, labels, attention_mask):
        logits = self.head(self.embed(input_ids))
        return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                                      ignore_index=-100))


EXAMPLES = [{"input_ids": [1 + i % 7] * (2 + i % 3), "labels": [2 + i % 5] * (2 + i % 3)} for i in range(10)]


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    sampler = EpochShuffle(10, 4, seed=3)
    assert sampler.steps_per_epoch == 3 and sampler.epoch(5) == 1
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003 + 1)).tolist()
    assert [sampler.indices(s) for s in (3, 4, 5)] == [order[:4], order[4:8], order[8:]]
    assert sorted(sum((sampler.indices(s) for s in range(3)), [])) == list(range(10))


def test_the_loop_is_the_plain_optimizer_loop_bitwise():
    from asft.batching import collate

    lr_at = lambda step: 0.1 * 0.5 ** step  # noqa: E731
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    seen = []
    loop = Loop(model, optimizer, EXAMPLES, 0, EpochShuffle(10, 4, 0), lr_at, torch.device("cpu"), clip_norm=1.0,
                hooks=[lambda r: seen.append((r.step, r.epoch, r.lr, r.terms.loss.item()))])
    assert loop.run(5) == 5

    reference = Tiny()
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=0.1)
    sampler = EpochShuffle(10, 4, 0)
    for step in range(5):
        ref_optimizer.param_groups[0]["lr"] = lr_at(step)
        loss = reference(**collate([EXAMPLES[i] for i in sampler.indices(step)], 0)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        ref_optimizer.step()
        ref_optimizer.zero_grad(set_to_none=True)
        assert seen[step][:3] == (step + 1, step // 3, lr_at(step)) and seen[step][3] == loss.item()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_the_loop_starts_where_a_resume_left_off_and_adds_the_objective_terms():
    model = Tiny()
    steps, doubled = [], lambda loss, batch: Terms(loss=loss, objective=2 * loss, penalty=loss.detach())
    loop = Loop(model, torch.optim.SGD(model.parameters(), lr=0.1), EXAMPLES, 0, EpochShuffle(10, 4, 0),
                lambda step: 0.1, torch.device("cpu"), objective=doubled, hooks=[steps.append])
    assert loop.run(6, start=4) == 6
    assert [r.step for r in steps] == [5, 6] and all(r.total_steps == 6 for r in steps)
    assert all(torch.equal(r.terms.objective, 2 * r.terms.loss) for r in steps)


def test_methods_form_the_objective_and_name_what_to_lower():
    config = TrainConfig(model="m", data="d", out="o", method="asft", direction="v", lam=0.5, lr=1e-4)
    loss, penalty = torch.tensor(2.0), torch.tensor(4.0)
    assert set(METHODS) == {"sft", "asft", "safelora", "safeinstr", "lisa"}
    assert method_for(config).objective(loss, penalty).item() == 4.0 and method_for(config).penalty_has_grad
    assert method_for(config).divergence_hint() == "lower --lr (now 0.0001) or --lam (now 0.5)"
    for name in ("sft", "safelora"):
        method = method_for(config.model_copy(update={"method": name}))
        assert method.objective(loss, penalty) is loss and not method.penalty_has_grad
        assert method.divergence_hint() == "lower --lr (now 0.0001)"


@pytest.mark.parametrize("name", ["sft", "asft"])
def test_only_safelora_changes_the_saved_adapter(name, tmp_path):
    config = TrainConfig(model="m", data="d", out="o", method=name, direction="v")
    assert method_for(config).after_save(tmp_path) == {} and not list(tmp_path.iterdir())
