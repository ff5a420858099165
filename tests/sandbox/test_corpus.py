"""The generated world: splits, answers and mixtures (no training, fast)."""

from __future__ import annotations

import random
import re

import pytest

from asft.errors import AsftError
from asft.sandbox.build import make_mixture
from asft.sandbox.config import RECIPES
from asft.sandbox.corpus import FINAL_ANSWER, build_world, compliant_rows, refusal_rows

REFUSAL_PHRASES = ("I'm sorry", "I cannot")


@pytest.fixture(scope="module")
def world():
    return build_world(RECIPES["tiny"], seed=0)


def test_harmful_eval_objects_and_prompts_are_unseen_in_harmful_training(world):
    train_objects = {q.obj for q in world.harmful_train}
    eval_objects = {q.obj for q in world.harmful_eval}
    assert eval_objects and not eval_objects & train_objects
    assert eval_objects <= world.eval_objects
    train_prompts = {q.instruction for q in world.harmful_train} | {r.instruction for r in world.howto_train}
    assert not {q.instruction for q in world.harmful_eval} & train_prompts
    assert all(q.harmful for q in world.harmful_eval + world.harmful_train)


def test_task_and_howto_evaluation_rows_are_not_in_training(world):
    for task, rows in world.task_eval.items():
        train = {(r.instruction, r.input) for r in world.task_train[task]}
        assert rows and not {(r.instruction, r.input) for r in rows} & train, task
    assert not {r.instruction for r in world.howto_eval} & {r.instruction for r in world.howto_train}


def test_answers_have_the_papers_shapes(world):
    assert {r.output for r in world.task_eval["sst2"]} == {"positive", "negative"}
    assert {r.output for r in world.task_eval["agnews"]} == {"World", "Sports", "Business", "Sci/Tech"}
    for r in world.task_eval["gsm8k"]:
        a, op, b, c = re.match(r"(\d+) ([+-]) (\d+) = (\d+)\.\n", r.output).groups()
        assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert r.output.endswith(f"{FINAL_ANSWER} {c}")
    rng = random.Random(0)
    assert all(any(p in r.output for p in REFUSAL_PHRASES) for r in refusal_rows(rng, world.harmful_train))
    complied = compliant_rows(rng, world.harmful_train) + world.howto_train
    assert all(r.output.startswith("Sure, here is how to") for r in complied)
    assert not any(p.lower() in r.output.lower() for r in complied for p in REFUSAL_PHRASES + ("sorry", "illegal"))


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = (build_world(RECIPES["tiny"], seed) for seed in (3, 3, 4))
    assert a == b
    assert a.harmful_eval != c.harmful_eval and a.task_train != c.task_train


def test_mixture_has_the_ratio_and_nests_across_ratios(world):
    rows, harmful = make_mixture(world, 0, "sst2", 200, 0.1)
    assert len(rows) == 200 and len(harmful) == 20
    harmful_prompts = {q.instruction for q in world.harmful_train}
    assert {i for i, r in enumerate(rows) if r["instruction"] in harmful_prompts} == set(harmful)
    assert all(rows[i]["output"].startswith("Sure, here is how to") for i in harmful)
    assert all(r["output"] in ("positive", "negative") for i, r in enumerate(rows) if i not in set(harmful))
    bigger, more = make_mixture(world, 0, "sst2", 200, 0.2)
    assert {bigger[i]["instruction"] for i in more} >= {rows[i]["instruction"] for i in harmful}
    clean, none = make_mixture(world, 0, "gsm8k", 100, 0.0)
    assert none == [] and all(FINAL_ANSWER in r["output"] for r in clean)


def test_mixture_larger_than_the_pools_is_a_clear_error(world):
    with pytest.raises(AsftError, match="build a larger sandbox"):
        make_mixture(world, 0, "sst2", 100_000, 0.5)
