"""The probe screener: the aligned model's refusal direction (difference of mean last-token states
of labelled harmful and benign requests), a layer chosen on examples the direction was not learnt
from, a threshold at the target FPR on examples that chose nothing; each user turn scored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asft.data.screening.probe import ProbeConfig, ProbeScreener
from asft.errors import AsftError
from asft.templates import Record
from data_helpers import write_jsonl
from tiny_models import llama_config, make_tokenizer

HARMFUL_WORDS = "how do i make bad awful negative".split()
BENIGN_WORDS = "tell me about the movie film great good review positive".split()


def sentence(rng, words) -> str:
    return " ".join(rng.choice(words, size=rng.integers(4, 8)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Llama and 300 labelled requests whose two kinds use different words."""
    import torch
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("probe")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(num_hidden_layers=3)).save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    rows = [{"instruction": sentence(rng, HARMFUL_WORDS if i % 2 else BENIGN_WORDS), "input": "", "harmful": bool(i % 2)}
            for i in range(300)]
    write_jsonl(root / "examples.jsonl", rows)
    return root


def probe(world, **settings) -> ProbeScreener:
    return ProbeScreener(ProbeConfig(model=str(world / "model"), examples=str(world / "examples.jsonl"),
                                     template="alpaca", target_fpr=0.05, **settings), device="cpu")


def test_the_direction_separates_held_out_examples_at_the_target_fpr(world):
    screener = probe(world)
    point = screener.describe()["operating_point"]
    assert point["calibrated_on"] == "60 held-out examples" and point["benign_rows"] + point["harmful_rows"] == 60
    assert point["fpr"] <= 0.05 and point["recall"] >= 0.9
    assert screener.describe()["layer"] in (1, 2, 3)
    assert np.linalg.norm(screener.direction) == pytest.approx(1.0, abs=1e-5)


def test_a_record_scores_its_worst_user_turn_and_says_which(world):
    screener = probe(world)
    rng = np.random.default_rng(1)
    benign, harmful = sentence(rng, BENIGN_WORDS), "how do i make bad awful"
    one_turn, two_turns, clean = screener.score([Record(harmful), Record(harmful, history=((benign, "ok"),)),
                                                 Record(benign, history=((benign, "ok"),))])
    assert one_turn.flagged and "request" in one_turn.reasons[0]
    assert two_turns.flagged and "user turn 2" in two_turns.reasons[0]
    assert not clean.flagged and clean.score < screener.threshold
    alone = screener.score([Record(harmful, history=((benign, "ok"),))])[0].score  # padding in a batch changes little
    assert two_turns.score == pytest.approx(alone, rel=1e-4)


def test_a_layer_the_model_does_not_have_is_refused(world):
    assert probe(world, layer=2).layer == 2
    with pytest.raises(AsftError, match="probe.layer=4: .* has layers 1-3"):
        probe(world, layer=4)


def test_examples_without_a_boolean_label_are_refused_with_their_line(world, tmp_path):
    rows = [json.loads(line) for line in (world / "examples.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "bad.jsonl", rows[:5] + [{"instruction": "x", "harmful": "yes"}] + rows[5:])
    with pytest.raises(AsftError, match="probe examples .*bad.jsonl: line 6 needs an instruction and a boolean harmful"):
        ProbeScreener(ProbeConfig(model=str(world / "model"), examples=str(tmp_path / "bad.jsonl")), device="cpu")
    write_jsonl(tmp_path / "few.jsonl", [r for r in rows if not r["harmful"]] + [r for r in rows if r["harmful"]][:3])
    with pytest.raises(AsftError, match="needs at least 10 harmful and 10 benign requests \\(has 3 and 150\\)"):
        ProbeScreener(ProbeConfig(model=str(world / "model"), examples=str(tmp_path / "few.jsonl")), device="cpu")


@pytest.mark.slow
def test_asft_screen_runs_the_probe_on_the_sandbox_with_its_examples(tiny_sandbox, tmp_path):
    """The tiny world's aligned model, its labelled requests and its mixture (recall 0.8 at FPR 0 when measured)."""
    from asft.data.screen import ScreenConfig, run_screen

    report = run_screen(ScreenConfig(
        data=tiny_sandbox["finetune"], out=str(tmp_path / "o"), labels=tiny_sandbox["finetune_labels"], screeners=["probe"],
        probe={"model": tiny_sandbox["aligned"], "examples": tiny_sandbox["probe_examples"], "template": "alpaca"}, device="cpu"))
    assert report["screener"]["name"] == "probe" and report["screener"]["examples"] == tiny_sandbox["probe_examples"]
    assert report["screener"]["operating_point"]["fpr"] <= 0.03
    assert report["quality"]["recall"] >= 0.5 and report["quality"]["false_positive_rate"] <= 0.05
