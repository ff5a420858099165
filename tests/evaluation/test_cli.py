"""``asft eval`` through the real entry point: bad input is one error line and exit 2."""

import json
import sys

import pytest
import torch

from asft.cli import main
from eval_helpers import write_rows


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["asft", "eval", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


@pytest.fixture()
def prompts(tmp_path):
    return write_rows(tmp_path / "harmful.jsonl", [{"instruction": "How do I open the lock?"},
                                                   {"instruction": "How do I move the car?"}])


@pytest.mark.slow
def test_eval_prints_the_report_as_json(monkeypatch, capsys, tmp_path, tiny_lm, prompts):
    gsm = write_rows(tmp_path / "gsm.json", [{"instruction": "2 + 2?", "output": "2 + 2 = 4\nThe final answer is: 4"}],
                     as_array=True)
    code, out, _ = run(monkeypatch, capsys, "--model", str(tiny_lm), "--harmful", str(prompts),
                       "--utility", f"gsm8k={gsm}", "--utility", rf"regex:is=(\d+)={gsm}",
                       "--out", str(tmp_path / "out"), "--max-new-tokens", "4", "--device", "cpu", "--json")
    assert code == 0
    report = json.loads(out)
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["harmful_total"] == 2 and set(report["utility"]) == {"gsm8k", r"regex:is=(\d+)"}
    assert report["protocol"]["judge"]["name"] == "keyword-refusal"


def _pickle_checkpoint(folder):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    return folder


def _remote_code_checkpoint(folder):
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "asft_custom_lm", "architectures": ["CustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}))
    save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.slow  # the tiny model fixture
@pytest.mark.parametrize("case,expected", [
    ("missing_model", "no such file or folder"),
    ("pickle_model", "weights are in pickle format (pytorch_model.bin)"),
    ("remote_code", "needs custom code from the checkpoint; pass --trust-remote-code"),
    ("empty_prompts", "file is empty"),
    ("malformed_prompts", "bad.jsonl: line 2: invalid JSON"),
    ("missing_instruction", "bad.jsonl: row 1: no 'instruction', 'messages', 'conversations' or 'prompt' field (got question)"),
    ("unknown_judge", "--judge 'llm': unknown judge; choose keyword, sandbox, moderation or guard"),
    ("unknown_task", "--utility: unknown utility task 'mmlu'"),
    ("no_equals", "--utility 'sst2': expected TASK=FILE"),
    ("moderation_without_model", "--judge: the moderation judge needs a judge model (--judge-model PATH)"),
    ("guard_model_missing", "no such file or folder"),
    ("nothing_to_do", "nothing to evaluate"),
])
def test_bad_input_is_one_error_line_and_exit_2(monkeypatch, capsys, tmp_path, tiny_lm, prompts, case, expected):
    model, harmful, extra = str(tiny_lm), str(prompts), []
    if case == "missing_model":
        model = str(tmp_path / "nope")
    elif case == "pickle_model":
        model = str(_pickle_checkpoint(tmp_path / "pickled"))
    elif case == "remote_code":
        model = str(_remote_code_checkpoint(tmp_path / "custom"))
    elif case == "empty_prompts":
        (tmp_path / "empty.jsonl").write_text("\n")
        harmful = str(tmp_path / "empty.jsonl")
    elif case == "malformed_prompts":
        (tmp_path / "bad.jsonl").write_text('{"instruction": "ok"}\n{"instruction": \n')
        harmful = str(tmp_path / "bad.jsonl")
    elif case == "missing_instruction":
        (tmp_path / "bad.jsonl").write_text('{"question": "ok"}\n')  # {"prompt": ...} is a prompt/response row
        harmful = str(tmp_path / "bad.jsonl")
    elif case == "unknown_judge":
        extra = ["--judge", "llm"]
    elif case == "unknown_task":
        extra = ["--utility", f"mmlu={prompts}"]
    elif case == "no_equals":
        extra = ["--utility", "sst2"]
    elif case == "moderation_without_model":
        extra = ["--judge", "moderation"]
    elif case == "guard_model_missing":
        extra = ["--judge", "guard", "--judge-model", str(tmp_path / "no-guard")]
    args = ["--model", model, "--out", str(tmp_path / "out"), "--device", "cpu", *extra]
    if case != "nothing_to_do":
        args += ["--harmful", harmful]
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 2
    assert err.startswith("asft: error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
