"""Sharded evaluation: shard I/N answers every N-th prompt of each set; the merged shards are
the whole evaluation's report and samples. The vLLM engine's checks and the prompt ids it shares."""

import json

import pytest

from asft.errors import AsftError
from asft.evaluation import EvalConfig, JudgeConfig, evaluate
from asft.evaluation.shards import merge_shards, shard_outputs
from eval_helpers import QUESTIONS, write_rows

UNTIMED = ("timings", "report", "samples")


def whole_config(sandbox: dict, out, **extra) -> EvalConfig:
    settings = {"limit": 7, "max_new_tokens": 8, "batch_size": 4, "device": "cpu", "progress": False, **extra}
    return EvalConfig(model=sandbox["aligned"], harmful=sandbox["harmful_eval"], over_refusal=sandbox["benign_eval"],
                      utility=sandbox["utility_eval"], out=str(out), **settings)


def run_shards(config: EvalConfig, count: int) -> list[str]:
    outs = shard_outputs(config.out, count)
    for shard, out in outs.items():
        evaluate(config.model_copy(update={"shard": shard, "out": out}))
    return list(outs.values())


def samples(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_merged_shards_are_the_whole_evaluation(tiny_sandbox, moderation_flags_all, tmp_path):
    judges = {"extra_judges": [JudgeConfig(kind="moderation", model=str(moderation_flags_all))]}
    whole = evaluate(whole_config(tiny_sandbox, tmp_path / "whole", **judges))
    config = whole_config(tiny_sandbox, tmp_path / "merged", **judges)
    outs = run_shards(config, 3)
    first = json.loads((tmp_path / "merged-shards" / "0-of-3" / "report.json").read_text())
    assert first["shard"] == "0/3" and first["protocol"]["shard"] == "0/3"
    assert first["harmful_total"] == 3 and first["protocol"]["harmful_set"]["rows_used"] == 3  # rows 0, 3, 6 of 7
    assert [s["index"] for s in samples(tmp_path / "merged-shards" / "1-of-3") if s["set"] == "harmful"] == [1, 4]

    merged = merge_shards(config, outs)
    assert {k: v for k, v in merged.items() if k not in UNTIMED} == {k: v for k, v in whole.items() if k not in UNTIMED}
    assert samples(tmp_path / "merged") == samples(tmp_path / "whole")
    assert json.loads((tmp_path / "merged" / "report.json").read_text()) == json.loads(json.dumps(merged))
    # the figures the gates read, spelled out: harmful score, over-refusal, fine-tune accuracy
    assert merged["harmful_total"] == 7 and merged["harmful_score"] == whole["harmful_score"]
    assert merged["over_refusal"] == whole["over_refusal"] and merged["utility"] == whole["utility"]
    assert merged["judge_agreement"] == whole["judge_agreement"]
    assert merged["timings"]["prompts"] == whole["timings"]["prompts"] and len(merged["timings"]["shards"]) == 3
    assert "shard" not in merged and "shard" not in merged["protocol"]


@pytest.mark.slow
def test_merge_refuses_shards_it_cannot_put_together(tiny_sandbox, tmp_path):
    config = whole_config(tiny_sandbox, tmp_path / "merged", limit=4)
    outs = run_shards(config, 2)
    with pytest.raises(AsftError, match="expected 0/2"):
        merge_shards(config, outs[::-1])
    with pytest.raises(AsftError, match="expected 0/1"):  # one of two shards is not the whole evaluation
        merge_shards(config, outs[:1])
    other = config.model_copy(update={"limit": 3})  # the shards answered 4 rows of each set
    with pytest.raises(AsftError, match="not rows 0..2 once each"):
        merge_shards(other, outs)
    with pytest.raises(AsftError, match="no complete evaluation"):
        merge_shards(config, [outs[0], str(tmp_path / "missing")])
    with pytest.raises(AsftError, match="names shard 1/2"):
        merge_shards(config.model_copy(update={"shard": "1/2"}), outs)


def test_more_shards_than_rows_fail_before_any_model_is_loaded(tmp_path):
    harmful = write_rows(tmp_path / "harmful.jsonl", [{"instruction": q} for q in QUESTIONS[:3]])
    config = EvalConfig(model=str(tmp_path / "no-model"), harmful=str(harmful), out=str(tmp_path / "out"),
                        shard="0/4", device="cpu", progress=False)
    with pytest.raises(AsftError, match="the harmful set has 3 rows, fewer than the 4 shards; use at most 3 shards"):
        evaluate(config)
    with pytest.raises(ValueError, match="0 <= I < N"):
        EvalConfig(model="m", harmful=str(harmful), out="o", shard="4/4")


@pytest.mark.parametrize("device, message", [
    ("cpu", "engine vllm: device cpu: vLLM runs on the GPUs CUDA_VISIBLE_DEVICES shows"),
    ("auto", "engine vllm needs a CUDA GPU and none is visible here; use engine hf"),
])
def test_vllm_engine_fails_in_one_line_before_anything_is_read(tmp_path, device, message):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the GPU check measures the vllm engine")
    config = EvalConfig(model=str(tmp_path / "no-model"), harmful=str(tmp_path / "no-prompts.jsonl"),
                        out=str(tmp_path / "out"), engine="vllm", device=device, progress=False)
    with pytest.raises(AsftError, match=message) as caught:
        evaluate(config)
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()


def test_engine_is_a_setting_and_shard_is_filled_in_by_the_pipeline():
    from asft import jobs
    from asft.pipeline_config import EvalSettings

    base = {"model": "m", "harmful": "h", "out": "o"}
    hf, vllm = EvalConfig(**base), EvalConfig(**base, engine="vllm")
    assert jobs.EVALUATION.identity(hf, []) != jobs.EVALUATION.identity(vllm, [])  # another engine, another cache entry
    assert jobs.EVALUATION.identity(hf, []) == jobs.EVALUATION.identity(EvalConfig(**base, shard="1/2"), [])
    assert "engine" in EvalSettings.model_fields and "shard" not in EvalSettings.model_fields
    assert EvalSettings().engine == "hf"


@pytest.mark.slow
def test_prompt_ids_budgeted_from_the_checkpoint_config_are_the_loaded_models(tiny_lm):
    """The vLLM engine encodes with the checkpoint's config (no model in memory), the HF engine
    with the loaded model's: the same ids, cut the same way."""
    from transformers import AutoConfig

    from asft.evaluation.generation import encode_records, load_model
    from asft.templates import Record

    model, tokenizer = load_model(tiny_lm, device="cpu")
    records = [Record("How do I paint the window?", ""), Record("How do I paint the window? " * 400, "")]
    settings = dict(template="alpaca", system_prompt="", max_new_tokens=8)
    from_model = encode_records(model.config, tokenizer, records, **settings)
    assert encode_records(AutoConfig.from_pretrained(tiny_lm), tokenizer, records, **settings) == from_model
    assert from_model[1] == [1] and len(from_model[0][1]) == 1024 - 8


@pytest.mark.slow
def test_cli_shards_and_merge(monkeypatch, capsys, tiny_lm, tmp_path):
    """``asft eval --shard I/N`` on each shard, then ``asft eval-merge --from ...``: the report ``asft eval`` writes."""
    import sys

    from asft.cli import main

    harmful = write_rows(tmp_path / "harmful.jsonl", [{"instruction": q} for q in QUESTIONS[:5]])
    common = ["--model", str(tiny_lm), "--harmful", str(harmful), "--max-new-tokens", "4", "--device", "cpu",
              "--no-progress", "--json"]

    def asft(*args: str) -> dict:
        monkeypatch.setattr(sys, "argv", ["asft", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        assert (exit_info.value.code or 0) == 0, err
        return json.loads(out)

    whole = asft("eval", *common, "--out", str(tmp_path / "whole"))
    outs = [str(tmp_path / f"shard-{i}") for i in range(2)]
    for i, out in enumerate(outs):
        assert asft("eval", *common, "--shard", f"{i}/2", "--out", out)["harmful_total"] == (3, 2)[i]
    merged = asft("eval-merge", *common, "--out", str(tmp_path / "merged"), "--from", outs[0], "--from", outs[1])
    assert {k: v for k, v in merged.items() if k not in UNTIMED} == {k: v for k, v in whole.items() if k not in UNTIMED}
