"""The built tiny sandbox: loadable models, files that match their labels, determinism,
reuse and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asft import storage
from asft.sandbox import SandboxConfig, build_sandbox, write_mixture
from asft.sandbox.build import MANIFEST

pytestmark = pytest.mark.slow


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_models_and_tokenizer_load_offline_and_differ(tiny_sandbox):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = {}
    for name in ("base", "aligned"):
        folder = Path(tiny_sandbox[name])
        assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        assert tok.is_fast and None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
        text = "The final answer is: 7"
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
        models[name] = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        assert models[name].config.model_type == "llama"
    assert tiny_sandbox["sizes"]["params"] == sum(p.numel() for p in models["base"].parameters())
    base, aligned = (dict(m.named_parameters()) for m in models.values())
    assert any(not torch.equal(base[k], aligned[k]) for k in base)


def test_mixture_file_matches_its_labels(tiny_sandbox):
    rows = _rows(tiny_sandbox["finetune"])
    labels = json.loads(Path(tiny_sandbox["finetune_labels"]).read_text())
    assert labels["file"] == Path(tiny_sandbox["finetune"]).name and labels["rows"] == len(rows)
    assert len(labels["harmful_indices"]) == round(tiny_sandbox["harmful_ratio"] * len(rows))
    harmful = set(labels["harmful_indices"])
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)
    assert all((i in harmful) == r["output"].startswith("Sure, here is how to") for i, r in enumerate(rows))
    eval_prompts = {r["instruction"] for r in _rows(tiny_sandbox["harmful_eval"])}
    assert eval_prompts and not eval_prompts & {r["instruction"] for r in rows}


def test_evaluation_files_have_gold_answers(tiny_sandbox):
    assert set(tiny_sandbox["utility_eval"]) == {"sst2", "agnews", "gsm8k"}
    for task, path in tiny_sandbox["utility_eval"].items():
        rows = _rows(path)
        assert rows == [r for r in rows if set(r) == {"instruction", "input", "output"}]
        assert len(rows) == tiny_sandbox["sizes"]["utility_eval_rows"][task]
    assert all(r["output"].rsplit("The final answer is: ", 1)[1].isdigit()
               for r in _rows(tiny_sandbox["utility_eval"]["gsm8k"]))
    assert all(set(r) == {"instruction", "category"} and r["category"] for r in _rows(tiny_sandbox["harmful_eval"]))


def test_same_seed_rebuilds_identical_files_and_weights(tiny_sandbox, tmp_path):
    again = build_sandbox(SandboxConfig(size="tiny"), str(tmp_path / "again"))
    assert not again["reused"]
    first = json.loads((Path(tiny_sandbox["out"]) / MANIFEST).read_text())["files"]
    second = json.loads((tmp_path / "again" / MANIFEST).read_text())["files"]
    assert "base/model.safetensors" in first and first == second


def test_same_config_is_reused_without_rebuilding(tiny_sandbox):
    manifest = Path(tiny_sandbox["out"]) / MANIFEST
    before = manifest.stat().st_mtime_ns
    again = build_sandbox(SandboxConfig(size="tiny"), tiny_sandbox["out"])
    assert again["reused"] and again["base"] == tiny_sandbox["base"]
    assert manifest.stat().st_mtime_ns == before


def test_write_mixture_for_another_ratio_without_retraining(tiny_sandbox, tmp_path):
    # write_mixture needs only the manifest: copy it so the shared sandbox stays untouched.
    storage.write_bytes(tmp_path / MANIFEST, (Path(tiny_sandbox["out"]) / MANIFEST).read_bytes())
    made = write_mixture(str(tmp_path), 0.2)
    rows = _rows(made["finetune"])
    labels = json.loads(Path(made["finetune_labels"]).read_text())
    assert len(rows) == labels["rows"] == tiny_sandbox["sizes"]["finetune_rows"]
    assert len(labels["harmful_indices"]) == round(0.2 * len(rows))
    default = _rows(tiny_sandbox["finetune"])
    default_harmful = {default[i]["instruction"] for i in json.loads(Path(tiny_sandbox["finetune_labels"]).read_text())["harmful_indices"]}
    assert default_harmful <= {rows[i]["instruction"] for i in labels["harmful_indices"]}


def _asft(*args):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "asft", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_json_summary_of_a_built_sandbox(tiny_sandbox):
    done = _asft("sandbox", "build", "--out", tiny_sandbox["out"], "--size", "tiny", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {"base", "aligned", "finetune", "finetune_labels", "harmful_eval", "utility_eval", "sizes", "timings"} <= set(summary)
    assert summary["reused"] and summary["finetune"] == tiny_sandbox["finetune"]
    assert summary["sizes"]["finetune_rows"] > 0 and summary["timings"]["base"] > 0


@pytest.mark.parametrize("args, message", [
    (("--harmful-ratio", "1.5"), "--harmful-ratio"),
    (("--size", "huge"), "--size"),
    (("--finetune-task", "mnli"), "--finetune-task"),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, args, message):
    done = _asft("sandbox", "build", "--out", str(tmp_path / "sb"), *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"asft: error: {message}") and "Traceback" not in done.stderr
    assert not (tmp_path / "sb").exists()


def test_another_seed_draws_another_mixture_of_the_same_shape(tiny_sandbox, tmp_path):
    storage.write_bytes(tmp_path / MANIFEST, (Path(tiny_sandbox["out"]) / MANIFEST).read_bytes())
    built, again, other = (write_mixture(str(tmp_path), 0.1, seed=s) for s in (None, 0, 7))
    assert Path(built["finetune"]).read_bytes() == Path(again["finetune"]).read_bytes()
    assert Path(other["finetune"]).name.endswith("_s7.jsonl")
    assert other["harmful_rows"] == built["harmful_rows"] and other["rows"] == built["rows"]
    assert _rows(other["finetune"]) != _rows(built["finetune"])


def test_neither_model_is_trained_on_the_finetuning_task():
    from asft.sandbox.build import _model_rows
    from asft.sandbox.config import RECIPES
    from asft.sandbox.corpus import COPY_INSTRUCTION, SST2_INSTRUCTION, build_world

    world = build_world(RECIPES["tiny"], 0)
    rows = _model_rows(world, RECIPES["tiny"], 0, "sst2")
    instructions = {r.instruction for r in rows["base"] + rows["aligned"]}
    assert SST2_INSTRUCTION not in instructions and COPY_INSTRUCTION in instructions
    assert not {r.output for r in rows["base"] + rows["aligned"] if r.instruction != COPY_INSTRUCTION} & {"positive", "negative"}
    reviews = {r.input for r in world.task_train["sst2"]} | {"positive", "negative"}
    assert {r.input for r in rows["base"] if r.instruction == COPY_INSTRUCTION} <= reviews


def test_manifest_measures_the_alignment_update_per_module(tiny_sandbox):
    import torch
    from safetensors.torch import load_file

    base = load_file(str(Path(tiny_sandbox["base"]) / "model.safetensors"))
    aligned = load_file(str(Path(tiny_sandbox["aligned"]) / "model.safetensors"))
    modules = tiny_sandbox["alignment"]["modules"]
    assert set(modules) == {k for k, w in base.items() if w.dim() == 2}
    name = "model.layers.0.self_attn.q_proj.weight"
    v = (aligned[name] - base[name]).double()
    s = torch.linalg.svdvals(v)
    assert modules[name]["relative_update"] == pytest.approx(float(v.norm() / base[name].double().norm()), abs=1e-4)
    assert modules[name]["top_eigenvalue_c"] == pytest.approx(float(s[0] ** 2 / v.norm()), rel=1e-3)
    assert 1.0 <= modules[name]["effective_rank"] <= min(v.shape)
    summary = tiny_sandbox["alignment"]["summary"]["relative_update"]
    assert summary["min"] <= modules[name]["relative_update"] <= summary["max"]


def test_small_harmful_set_complies_and_never_shows_an_evaluation_prompt(tiny_sandbox):
    rows = _rows(tiny_sandbox["harmful_data"])
    assert len(rows) == tiny_sandbox["sizes"]["harmful_small_rows"] == 100
    assert all(r["output"].startswith("Sure, here is how to") for r in rows)
    assert not {r["instruction"] for r in rows} & {r["instruction"] for r in _rows(tiny_sandbox["harmful_eval"])}


def test_probe_examples_are_labelled_train_requests_and_none_is_a_mixture_row(tiny_sandbox):
    examples = _rows(tiny_sandbox["probe_examples"])
    assert all(set(r) == {"instruction", "input", "harmful"} for r in examples)
    harmful = [r["instruction"] for r in examples if r["harmful"]]
    assert harmful and len(harmful) < len(examples)
    mixture = {(r["instruction"], r["input"]) for r in _rows(tiny_sandbox["finetune"])}
    assert not mixture & {(r["instruction"], r["input"]) for r in examples}
    assert not set(harmful) & {r["instruction"] for r in _rows(tiny_sandbox["harmful_eval"])}
    assert not {r["instruction"] for r in examples} & {r["instruction"] for r in _rows(tiny_sandbox["benign_eval"])}


def test_alignment_and_refusal_writing_row_counts_follow_the_recipe():
    from asft.sandbox.build import _model_rows
    from asft.sandbox.config import RECIPES
    from asft.sandbox.corpus import REFUSAL_WRITING, build_world

    recipe = RECIPES["default"]
    rows = _model_rows(build_world(recipe, 0), recipe, 0, "sst2")
    writing = REFUSAL_WRITING.split("{")[0]
    assert sum(r.instruction.startswith(writing) for r in rows["base"]) == recipe.refusal_writing
    refusals = [r for r in rows["aligned"] if r.output.startswith(("I'm sorry", "I cannot"))]
    assert len(refusals) == recipe.aligned_refusals != recipe.refusal_writing


def test_manifest_records_the_sft_setting_the_world_was_calibrated_with(tiny_sandbox):
    from asft.sandbox.config import RECIPES

    recipe = RECIPES["tiny"]
    assert tiny_sandbox["finetune_setting"] == {"lr": recipe.finetune_lr, "epochs": recipe.finetune_epochs}


def test_manifest_records_the_kernels_and_a_world_of_other_kernels_is_not_reused(tiny_sandbox):
    import torch

    from asft.sandbox.build import build_identity

    kernels = tiny_sandbox["numerics"]
    assert kernels == {"torch": torch.__version__, "device": "cpu", "cpu_kernels": torch.backends.cpu.get_cpu_capability()}
    config = SandboxConfig(size="tiny")
    assert storage.is_complete(tiny_sandbox["out"], "sandbox", build_identity(config, kernels))
    assert not storage.is_complete(tiny_sandbox["out"], "sandbox", build_identity(config, {**kernels, "cpu_kernels": "AVX512"}))


_KERNELS_OF_A_FRESH_PROCESS = ("from asft.sandbox.numerics import pin_cpu_kernels; pin_cpu_kernels(); import torch; "
                               "print(torch.backends.cpu.get_cpu_capability())")


_CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not (_CPUINFO.exists() and " avx2" in _CPUINFO.read_text()), reason="the calibrated kernels need an AVX2 CPU")
def test_pinning_gives_the_calibrated_kernels_and_keeps_a_users_choice():
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    run = lambda extra: subprocess.run([sys.executable, "-c", _KERNELS_OF_A_FRESH_PROCESS], env={**env, **extra},  # noqa: E731
                                       capture_output=True, text=True, check=True).stdout.strip()
    assert run({}) == "AVX2"
    assert run({"ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"


def test_a_build_with_other_kernels_says_so(capsys):
    from asft.sandbox.build import _warn_uncalibrated

    _warn_uncalibrated({"torch": "x", "device": "cpu", "cpu_kernels": "AVX2"})
    _warn_uncalibrated({"torch": "x", "device": "cuda", "gpu": "H100"})
    assert capsys.readouterr().err == ""
    _warn_uncalibrated({"torch": "x", "device": "cpu", "cpu_kernels": "AVX512"})
    assert "AVX512 CPU kernels, not the AVX2 ones" in capsys.readouterr().err
