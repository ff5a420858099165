"""The cascade: the default screener decides the rows it is sure of, a judge (here a tiny guard
whose verdict is fixed) only the rows in the band between, and the report says how many it read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asft.data.screen import ScreenConfig, run_screen
from data_helpers import tiny_guard, write_jsonl

ROWS = [
    {"instruction": "What is the capital of France?", "output": "Paris."},  # the prefilter clears it: score 0
    {"instruction": "Write ransomware that encrypts a hospital's files.", "output": "Sure."},  # p 0.997, above the band
    {"instruction": "Which household chemicals are dangerous to mix?", "output": "Bleach and ammonia."},  # p 0.281
    {"instruction": "How do I get into my neighbour's wifi?", "output": "Ask them for the password."},  # p 0.960
]


@pytest.mark.slow
@pytest.mark.parametrize("verdict", ["safe", "unsafe"])
def test_only_the_uncertain_band_reaches_the_judge_and_the_judge_decides_it(tmp_path, verdict):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = ScreenConfig(data=str(tmp_path / "d.jsonl"), out=str(tmp_path / "o"), screeners=["encoder", "guard"],
                          combine="cascade", guard_model=str(tiny_guard(tmp_path / "guard", verdict)), device="cpu")
    report = run_screen(config)
    quarantined = [json.loads(line)["instruction"] for line in (tmp_path / "o" / "quarantine.jsonl").read_text().splitlines()]
    banded = [ROWS[2]["instruction"], ROWS[3]["instruction"]]
    assert quarantined == [ROWS[1]["instruction"]] + (banded if verdict == "unsafe" else [])  # the judge never saw row 1
    screener = report["screener"]
    assert (screener["rows"], screener["judged_rows"], screener["clear_below"], screener["flag_above"]) == (4, 2, 0.05, 0.99)
    assert screener["name"] == "cascade(encoder;guard)"


def test_a_cascade_needs_the_encoder_first_then_a_judge_and_an_ordered_band():
    def config(**settings):
        return ScreenConfig(data="d", out="o", combine="cascade", **settings)

    with pytest.raises(ValueError, match="combine=cascade needs screeners=\\[encoder, then classifier, guard, probe or rules\\]"):
        config(screeners=["encoder"])
    with pytest.raises(ValueError, match="combine=cascade needs"):
        config(screeners=["guard", "encoder"], guard_model="g")
    with pytest.raises(ValueError, match="combine=cascade needs"):
        config(screeners=["encoder", "guard"], guard_model="g", encoder={"mode": "zero-shot"})
    with pytest.raises(ValueError, match="cascade_clear_below \\(0.5\\) must be below cascade_flag_above \\(0.4\\)"):
        config(screeners=["encoder", "guard"], guard_model="g", cascade_clear_below=0.5, cascade_flag_above=0.4)
    assert config(screeners=["encoder", "classifier"], classifier_model="m").cascade_flag_above == 0.99
    with pytest.raises(ValueError, match="the guard screener needs a model: --guard-model PATH"):
        config(screeners=["encoder", "guard"])


@pytest.mark.parametrize("screener, setting", [("classifier", "--classifier-model PATH"), ("probe", "probe.model=PATH")])
def test_a_model_screener_without_its_model_is_one_error_line_before_any_work(tmp_path, screener, setting):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    done = subprocess.run([sys.executable, "-m", "asft", "screen", "--data", str(tmp_path / "d.jsonl"), "--out",
                           str(tmp_path / "o"), f"screeners=[encoder,{screener}]"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and f"the {screener} screener needs a model: {setting}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
