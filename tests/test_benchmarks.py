"""The benchmark entry point runs end to end on tiny shapes and reports every ratio with the
metadata it was measured on (the timings themselves are not asserted: they belong to
benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RATIOS = ("asft_step_over_sft_step", "naive_over_fast_penalty", "extract_peak_rss_over_largest_tensor",
          "extract_time_over_read_time", "batched_over_sequential_generation", "direction_device_bytes")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from benchmarks.__main__ import main

    out = tmp_path_factory.mktemp("bench") / "report.json"
    assert main(["--tiny", "--json", "--device", "cpu", "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_tiny_run_reports_every_ratio_with_its_metadata(report):
    assert report["mode"] == "tiny" and report["errors"] == {}
    assert set(RATIOS) <= set(report["ratios"])
    for value in report["ratios"].values():
        assert isinstance(value, float) and value > 0
    env = report["environment"]
    assert {"torch", "transformers", "peft", "device_name", "date"} <= set(env)
    for name, record in report["results"].items():
        assert record["device"], name
        assert record["dtype"], name
        assert record["repeats"] >= 1, name
        assert record["shapes"] if "shapes" in record else record["measured_module_shape"], name
    step = report["results"]["asft_step_over_sft_step"]
    assert len(step["seconds"]["asft"]) == len(step["seconds"]["sft"]) == step["repeats"]
    assert step["shapes"]["lora_modules"] == 2 * step["shapes"]["layers"]


@pytest.mark.slow
def test_naive_and_fast_penalty_agree_and_low_rank_bytes_follow_the_shapes(report):
    penalty = report["results"]["naive_over_fast_penalty"]
    assert penalty["relative_difference_naive_vs_fast"] < 1e-4
    memory = report["results"]["direction_device_bytes"]
    assert memory["llama2_7b_qv_bytes"]["float32"] == 64 * 4096 * 4096 * 4 == memory["reference_anchor_bytes"]
    assert memory["llama2_7b_qv_bytes"]["float32"] >= 4 * memory["llama2_7b_qv_bytes"]["lowrank_float32"]
    d, k = memory["measured_module_shape"][0], memory["measured_rank"]
    assert memory["measured_bytes_one_module"]["lowrank_float32"] == d * k * 4 + 4  # L plus the float32 norm
    errors = memory["penalty_error_vs_exact_float32"]
    assert errors["float32"]["random"]["penalty_relative_error"] == 0.0
    # a decaying spectrum is what makes the truncation cheap
    assert (errors["lowrank_float32"]["decaying_spectrum"]["anchor_error"]
            < errors["lowrank_float32"]["random"]["anchor_error"])


def test_gpu_check_dry_run_writes_a_result_per_step(tmp_path):
    """--cpu-dry-run: every step on the CPU at tiny sizes (ddp is skipped here: the 2-process
    launches take minutes on 2 cores; tests/training/test_distributed.py runs them)."""
    out = tmp_path / "gpu"
    results = (ROOT / "benchmarks/RESULTS.md").read_text()
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--cpu-dry-run", str(out)], cwd=ROOT,
                          env={**__import__("os").environ, "ASFT_GPU_CHECK_SKIP": "ddp"},
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    steps = json.loads((out / "steps.json").read_text())
    assert [s["name"] for s in steps] == ["environment", "benchmarks", "screening", "training", "ddp", "engines", "sandbox_build",
                                          "sandbox_table", "table_lam100", "generation"]
    assert [s["name"] for s in steps if s["skipped"]] == ["ddp"]
    assert all(s["rc"] == 0 and s["seconds"] >= 0 for s in steps if not s["skipped"]), steps
    summary = (out / "summary.txt").read_text()
    assert "naive_over_fast_penalty" in summary and "batched_over_sequential_generation" in summary
    screening = json.loads((out / "screening.json").read_text())
    from benchmarks.screening import load_held_out

    distinct = {repr(r) for r in load_held_out("fresh/chat")[0]}
    assert list(screening["files"]) == ["fresh/chat"] and screening["throughput"]["encoder"]["rows"] == len(distinct)
    assert screening["throughput"]["encoder"]["rows_per_s"] > 0 and screening["encoder"]["device"] == "cpu"
    assert "screening encoder: " in summary and "screening fresh/chat: recall" in summary
    training = json.loads((out / "training.json").read_text())
    assert training["tokens_per_second"]["lora"] and training["asft_step_over_lora_step"] > 0
    assert "needs a CUDA GPU" in training["errors"]["qlora_4bit"]  # one clear line, the other arms still ran
    engines = json.loads((out / "engines.json").read_text())
    assert engines["tokens_per_s"]["hf"] > 0 and engines["ratio"] is None and "engine vllm" in engines["vllm_error"]
    assert "vllm_over_hf_generation" in summary and (out / "results.md").read_text().startswith("\n## GPU, ")
    assert (ROOT / "benchmarks/RESULTS.md").read_text() == results  # a dry run's figures stay in OUT_DIR


def test_ingest_memory_benchmark_runs_at_a_tiny_size(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ingest_memory", "--size-mb", "1.8", "--json",
                           "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    counts = result["screen"]["counts"]
    assert counts["input"] == result["rows"] and counts["accepted"] + counts["quarantined"] + counts["rejected"] == result["rows"]
    assert counts["quarantined"] >= result["rows"] // 50 and counts["rejected"] == result["rows"] // 1000 > 0
    assert result["peak_rss_growth_mib"] > 0 and result["raw_read"]["rows_per_s"] > result["screen"]["rows_per_s"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary data is removed


def test_refusal_benchmark_counts_every_answer_and_disguises_real_harmful_answers(bench_data):
    from asft.data.screening.refusals import is_refusal
    from benchmarks.refusals import disguised, harmful_answers, measure

    result = measure()
    assert (result["refusals_kept"]["rows"], result["non_refusals_passed"]["rows"]) == (120, 120)
    assert sum(t["called_refusal"] for t in result["by_style"]) == (result["refusals_kept"]["called_refusal"]
                                                                   + result["non_refusals_passed"]["called_refusal"])
    answers = harmful_answers(bench_data)
    assert len(answers) == len(set(answers)) == result["refusal_sentence_before_a_harmful_answer"]["rows"] > 250
    # each disguised row is a passing refusal sentence, then the answer: it passes exactly when the answer lets it
    one = disguised(["I can't help with that. It is dangerous."], ["Sure, here you go.", "Yes! Let's do it!"])
    assert (one["openings"], one["called_refusal"]) == (1, int(is_refusal("I can't help with that. Yes! Let's do it!")))


def test_the_cascade_ceiling_is_right_on_the_band_and_keeps_the_cheap_verdict_outside_it():
    from benchmarks.screening import cascade_ceiling

    flags, _, speed, _ = cascade_ceiling([0.0, 0.5, 0.995, 0.5, 0.03], [True, True, False, False, True])
    assert flags == [False, True, True, False, False]  # a miss below the band stays a miss, a false alarm above it stays
    assert speed["judged"] == 0.4


def test_every_held_out_harm_category_is_one_the_default_can_name():
    """The naming figure compares the default's category with the one each held-out row was
    written for: a writer's name that matches no head_data category would count as a silent miss."""
    from asft.data.screening.tuned import shipped_harm_categories
    from benchmarks.screening import HELD_OUT, load_held_out, named_right

    known = set(shipped_harm_categories()[1])
    for name in HELD_OUT:
        _, truth, categories = load_held_out(name, categories=True)
        assert all((c is None) != t for c, t in zip(categories, truth))  # a category for each harmful row, only those
        assert {n for c in categories if c for n in c} <= known, name
    assert named_right([True, True, False, True], ["weapons", "fraud", "theft", "drugs"],
                       [("weapons",), ("theft",), ("theft",), None]) == {"caught": 2, "named_right": 0.5}


@pytest.mark.slow
def test_the_probe_benchmark_measures_each_screener_on_the_sandbox(tiny_sandbox):
    """On the tiny world: a direction learnt from the world's own labelled requests separates its
    held-out examples; one learnt from head_data's English requests, which the model never saw, does not."""
    from benchmarks.probe import run, table

    result = run(tiny_sandbox["out"], "tiny")
    assert set(result["arms"]) == {"probe, the world's examples", "probe, head_data", "default encoder"}
    for arm in result["arms"].values():
        assert all(0.0 <= arm[k] <= 1.0 for k in ("mixture_recall", "mixture_fpr", "unseen_harmful_flagged", "benign_howtos_flagged"))
        assert arm["rows_per_s"] > 0
    own, english = (result["arms"][arm]["held_out"] for arm in ("probe, the world's examples", "probe, head_data"))
    assert own["fpr"] <= 0.03 and english["fpr"] <= 0.03  # the threshold holds its target on held-out examples
    assert own["recall"] >= english["recall"] + 0.5
    assert "probe, head_data" in table(result)


@pytest.mark.parametrize("args, says", [(["--files", "fresh/chat,nope"], "--files: no set named nope"),
                                        (["--files", "fresh/chat", "--tuned-model", "no-such-folder"], "no-such-folder: no such file")])
def test_the_screening_benchmark_refuses_bad_arguments_in_one_line(tmp_path, args, says):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.screening", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "ASFT_BENCH_DATA": ""})
    assert proc.returncode == 2 and says in proc.stderr.strip().splitlines()[-1] and not proc.stdout
