"""benchmarks.sandbox_table on the tiny sandbox: every row and column, figures over seeds
aggregated as documented, finished runs reused on a re-run and only the changed method
recomputed, and a method that brings its own model and direction."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from asft.training import PRESETS
from benchmarks import sandbox_table


def _run(capsys, sandbox: dict, out, *extra: str, methods: str = "sft,asft,safelora") -> dict:
    code = sandbox_table.main(["--json", "--sandbox", sandbox["out"], "--ratios", "0.1", "--methods", methods,
                               "--limit", "4", "--max-steps", "3", "--max-new-tokens", "8", "--out", str(out),
                               "--device", "cpu", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def _result(method, p, seed, flagged, total, refused, utility):
    return {"method": method, "p": p, "seed": seed, "harmful_flagged": flagged, "harmful_total": total,
            "harmful_score": 100.0 * flagged / total, "harm_score": 50.0 * flagged / total,
            "over_refusal": refused, "utility": utility,
            "utility_mean": sum(utility.values()) / len(utility), "finetune_accuracy": utility["sst2"],
            "train_s": 2.0 + seed, "eval_s": 1.0}


def test_aggregate_over_seeds_matches_a_hand_computation():
    runs = [_result("sft", 0.1, 0, 3, 8, 10.0, {"sst2": 80.0, "gsm8k": 20.0}),
            _result("sft", 0.1, 1, 5, 8, 20.0, {"sst2": 90.0, "gsm8k": 30.0}),
            _result("sft", 0.1, 2, 8, 8, 30.0, {"sst2": 70.0, "gsm8k": 10.0}),
            _result("asft", 0.1, 0, 0, 8, 5.0, {"sst2": 85.0, "gsm8k": 25.0})]
    sft, asft = sandbox_table.aggregate(runs)
    assert (sft["method"], sft["p"], sft["seeds"]) == ("sft", 0.1, [0, 1, 2])
    # harmful scores 37.5, 62.5, 100: mean 66.67, sample sd sqrt(((-29.17)^2 + (-4.17)^2 + 33.33^2) / 2) = 31.46
    assert sft["harmful_score"]["mean"] == pytest.approx(200 / 3)
    assert sft["harmful_score"]["sd"] == pytest.approx(31.4576, abs=1e-4)
    assert sft["harm_score"]["mean"] == pytest.approx(100 / 3) and sft["harm_score"]["sd"] == pytest.approx(31.4576 / 2, abs=1e-4)
    assert sft["over_refusal"]["mean"] == pytest.approx(20.0) and sft["over_refusal"]["sd"] == pytest.approx(10.0)
    assert sft["finetune_accuracy"]["mean"] == pytest.approx(80.0) and sft["finetune_accuracy"]["sd"] == pytest.approx(10.0)
    assert sft["utility"]["gsm8k"]["mean"] == pytest.approx(20.0) and sft["utility_mean"]["mean"] == pytest.approx(50.0)
    assert sft["train_s"] == pytest.approx(3.0)
    # pooled: 16 of 24 flagged; Wilson 95 %: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, n, p = 1.96, 24, 16 / 24
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    pooled = sft["harmful_pooled"]
    assert (pooled["flagged"], pooled["total"]) == (16, 24) and pooled["score"] == pytest.approx(200 / 3)
    assert pooled["wilson95"] == pytest.approx([100 * (centre - half), 100 * (centre + half)])
    assert pooled["wilson95"] == pytest.approx([46.71, 82.03], abs=0.01)
    # one seed: no sd, and the interval is that seed's own
    assert asft["harmful_score"] == {"mean": 0.0, "sd": None, "values": [0.0]}
    assert asft["harmful_pooled"]["wilson95"][0] == 0.0 and 30 < asft["harmful_pooled"]["wilson95"][1] < 40


@pytest.mark.slow
def test_table_over_seeds_rows_columns_plot_and_resume(tiny_sandbox, tmp_path, capsys):
    table = _run(capsys, tiny_sandbox, tmp_path, "--seeds", "2")  # no --size: the built sandbox's own size, no rebuild
    assert table["sandbox"]["size"] == "tiny" and table["sandbox"]["numerics"] == tiny_sandbox["numerics"]
    task = tiny_sandbox["finetune_task"]
    assert table["protocol"]["finetune_task"] == task and table["protocol"]["seeds"] == [0, 1]

    assert [r["method"] for r in table["reference"]] == ["base", "aligned"]
    assert [(r["method"], r["seed"]) for r in table["runs"]] == [
        ("sft", 0), ("asft", 0), ("safelora", 0), ("sft", 1), ("asft", 1), ("safelora", 1)]
    for row in table["runs"]:
        assert 0.0 <= row["harmful_score"] <= 100.0 and row["harmful_total"] == 4
        assert row["over_refusal_total"] == 4 and row["over_refusal"] == pytest.approx(100 * row["over_refused"] / 4)
        assert row["finetune_accuracy"] == row["utility"][task]
        assert set(row["utility"]) == set(tiny_sandbox["utility_eval"])
        assert row["eval_s"] > 0 and row["reused"] is False
    sft0, asft0, safelora0 = table["runs"][:3]
    assert sft0["steps"] == asft0["steps"] == 3 and sft0["train_s"] > 0
    assert safelora0["projected_from"] == "sft" and safelora0["steps"] is None  # projected, not trained
    assert asft0["final_penalty"] is not None
    # the seeds drew different mixtures and trained separately: one cell folder per run
    cells = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "cells").iterdir())
    assert cells == ["aligned", "asft-p0.1-s0", "asft-p0.1-s1", "base", "safelora-p0.1-s0", "safelora-p0.1-s1",
                     "sft-p0.1-s0", "sft-p0.1-s1"]
    # the table's cells are the runs aggregated per method and p
    assert [(c["method"], c["p"], c["seeds"]) for c in table["cells"]] == [
        ("sft", 0.1, [0, 1]), ("asft", 0.1, [0, 1]), ("safelora", 0.1, [0, 1])]
    assert table["cells"] == sandbox_table.aggregate(table["runs"])
    sft = table["cells"][0]
    assert sft["harmful_score"]["mean"] == pytest.approx((table["runs"][0]["harmful_score"] + table["runs"][3]["harmful_score"]) / 2)
    assert sft["harmful_pooled"]["total"] == 8
    assert table["claims"][0]["p"] == 0.1 and table["protocol"]["judge"]["kind"] == "keyword"
    assert (table["protocol"]["limit"], table["protocol"]["max_new_tokens"]) == (4, 8)
    assert table["plot"] == str(tmp_path / "table.png") and (tmp_path / "table.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "table.json").read_text())["cells"] == table["cells"]

    text = sandbox_table.markdown(table)
    header = text.splitlines()[0]
    for column in ("harmful score %", "pooled harmful % (Wilson 95%)", "over-refusal %", f"fine-tune acc % ({task})",
                   "mean utility", "train s", "eval s"):
        assert column in header
    body = [line for line in text.splitlines()[2:] if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in body] == [
        "base (reference)", "aligned", "sft", "asft", "safelora (sft adapter projected)"]
    assert all(len(line.split("|")) == len(header.split("|")) for line in body)
    sft_line = body[2].split("|")
    assert sft_line[3].strip() == "2" and sft_line[4].strip() == sandbox_table._pm(sft["harmful_score"])
    low, high = sft["harmful_pooled"]["wilson95"]
    assert sft_line[5].strip() == f"{sft['harmful_pooled']['score']:.1f} ({low:.1f}–{high:.1f})"

    # Another lam changes only the asft runs; fewer seeds reuse the finished ones.
    again = _run(capsys, tiny_sandbox, tmp_path, "--seeds", "2", "--lam", "10")
    assert [(r["method"], r["reused"]) for r in again["runs"]] == [
        ("sft", True), ("asft", False), ("safelora", True), ("sft", True), ("asft", False), ("safelora", True)]
    assert again["runs"][0]["harmful_score"] == sft0["harmful_score"]
    assert again["runs"][0]["train_s"] == sft0["train_s"]  # the recorded time, not a new one
    assert again["protocol"]["training"]["lam"] == 10
    one = _run(capsys, tiny_sandbox, tmp_path, "--seeds", "1", "--methods", "sft")
    assert [(r["method"], r["seed"], r["reused"]) for r in one["runs"]] == [("sft", 0, True)]
    assert one["cells"][0]["harmful_score"]["sd"] is None


@pytest.mark.slow
def test_a_method_with_its_own_model_and_direction_is_one_entry(tiny_sandbox, tmp_path, capsys, monkeypatch):
    from asft import storage

    made = []

    def copy_of(what):
        def make(args, inputs, folder):
            made.append(what)
            source = inputs["sandbox"]["aligned"] if what == "model" else inputs["direction"]["uri"]
            shutil.copytree(source, folder / what)
            return {"uri": str(folder / what), "sha256": storage.sha256_tree(folder / what)}
        return sandbox_table.Prepared(settings=lambda args: {"copy": what}, make=make)

    entry = sandbox_table.Method(lambda args, sandbox: {"method": "asft", "lam": args.lam},
                                 direction=copy_of("direction"), model=copy_of("model"))
    monkeypatch.setitem(sandbox_table.METHODS, "asft-copy", entry)
    table = _run(capsys, tiny_sandbox, tmp_path, "--seeds", "2", methods="asft-copy")
    inputs = table["method_inputs"]["asft-copy"]
    assert inputs["model"]["uri"].endswith("/model") and inputs["direction"]["uri"].endswith("/direction")
    assert made == ["model", "direction"]  # once per table, not per seed
    for seed in (0, 1):
        (manifest,) = (tmp_path / "cells").glob(f"asft-copy-p0.1-s{seed}-*/adapter/train_manifest.json")
        text = manifest.read_text()  # trained on the made model, anchored on the made direction
        assert inputs["model"]["uri"] in text and inputs["direction"]["uri"] in text
    again = _run(capsys, tiny_sandbox, tmp_path, "--seeds", "2", methods="asft-copy")
    assert made == ["model", "direction"] and again["method_inputs"]["asft-copy"]["model"]["reused"] is True
    assert all(r["reused"] for r in again["runs"])


def test_unset_lr_and_epochs_take_the_sandbox_worlds_calibrated_setting():
    calibrated = {"finetune_setting": {"lr": 5e-4, "epochs": 2}}
    args = sandbox_table.parse_args([])
    sandbox_table._use_calibrated_setting(args, calibrated)
    assert (args.lr, args.epochs) == (5e-4, 2)
    config = sandbox_table._train_config(args, "sft", {}, "m", "d.jsonl", None, 0, "out")
    assert (config.lr, config.epochs) == (5e-4, 2)
    args = sandbox_table.parse_args(["--lr", "1e-3", "--epochs", "3"])  # the user's own win
    sandbox_table._use_calibrated_setting(args, calibrated)
    assert (args.lr, args.epochs) == (1e-3, 3)
    args = sandbox_table.parse_args([])  # a world without a calibrated setting: the trainer's sandbox preset
    sandbox_table._use_calibrated_setting(args, {"finetune_setting": {"lr": None, "epochs": None}})
    config = sandbox_table._train_config(args, "sft", {}, "m", "d.jsonl", None, 0, "out")
    assert (config.lr, config.epochs) == (PRESETS["sandbox"]["lr"], PRESETS["sandbox"]["epochs"])


def test_every_method_entry_makes_its_train_config():
    args = sandbox_table.parse_args(["--lam", "3", "--safelora-k", "2"])
    sandbox = {"safety_data": "sbx/data/safety_refusals.jsonl", "harmful_data": "sbx/data/harmful_small.jsonl"}
    configs = {name: sandbox_table._train_config(args, name, sandbox, "aligned", "mix.jsonl", "dir", 1, "out")
               for name in sandbox_table.METHODS}
    assert list(configs) == ["sft", "asft", "asft-projector", "asft-alt", "safelora", "safelora-number", "safeinstr",
                             "lisa", "lox"]
    assert {c.seed for c in configs.values()} == {1} and {c.data for c in configs.values()} == {"mix.jsonl"}
    assert [configs[m].method for m in ("sft", "lox")] == ["sft", "sft"]
    assert (configs["asft"].anchor, configs["asft"].lam) == ("fro", 3.0)
    assert (configs["asft-projector"].anchor, configs["asft-projector"].top_k) == ("projector", 8)
    assert (configs["safelora"].safelora_mode, configs["safelora-number"].safelora_mode) == ("threshold", "number")
    assert configs["safelora-number"].safelora_k == 2
    assert (configs["safeinstr"].safety_data, configs["safeinstr"].safety_share) == (sandbox["safety_data"], 0.1)
    lisa = configs["lisa"]
    assert (lisa.alignment_data, lisa.lisa_alignment_steps, lisa.lisa_finetune_steps) == (sandbox["safety_data"], 2, 8)
    # what each brings besides its fields
    methods = sandbox_table.METHODS
    assert [m for m, e in methods.items() if e.projects] == ["safelora", "safelora-number"]
    assert [m for m, e in methods.items() if e.direction] == ["asft-alt"] and [m for m, e in methods.items() if e.model] == ["lox"]
    assert methods["lox"].model.settings(args) == {"top_k": 6, "alpha": 1.25}


@pytest.mark.slow
def test_the_other_defences_run_as_rows(tiny_sandbox, tmp_path, capsys):
    table = _run(capsys, tiny_sandbox, tmp_path, "--seeds", "1", "--alt-steps", "3", methods="asft-alt,safeinstr,lisa,lox")
    assert [r["method"] for r in table["runs"]] == ["asft-alt", "safeinstr", "lisa", "lox"]
    inputs = table["method_inputs"]
    assert sorted(inputs) == ["asft-alt", "lox"]
    learned = json.loads(Path(inputs["asft-alt"]["direction"]["uri"], "manifest.json").read_text())
    assert learned["source"] == "harmful-data" and learned["direction_sha256"] == inputs["asft-alt"]["direction"]["sha256"]
    lox = json.loads(Path(inputs["lox"]["model"]["uri"], "lox_manifest.json").read_text())
    assert (lox["top_k"], lox["alpha"]) == (6, 1.25)

    def manifest(method):
        (path,) = (tmp_path / "cells").glob(f"{method}-p0.1-s0-*/adapter/train_manifest.json")
        return json.loads(path.read_text())
    assert manifest("lox")["config"]["model"] == inputs["lox"]["model"]["uri"]  # fine-tuned from the LoX checkpoint
    assert manifest("asft-alt")["config"]["direction"] == inputs["asft-alt"]["direction"]["uri"]
    assert manifest("safeinstr")["config"]["safety_data"] == tiny_sandbox["safety_data"]
    assert manifest("lisa")["config"]["alignment_data"] == tiny_sandbox["safety_data"]
    for row in table["runs"]:
        assert row["steps"] == 3 and 0.0 <= row["harmful_score"] <= 100.0


@pytest.mark.parametrize("argv, message", [(["--ratios", "0.1,1.5"], "ratios must be shares in [0, 1]"),
                                           (["--seeds", "0"], "seeds must be a count from 1 to 100"),
                                           (["--methods", "sft,nope"], "methods must be among sft,asft")])
def test_bad_arguments_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        sandbox_table.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
