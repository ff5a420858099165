"""benchmarks.sandbox_table on the tiny sandbox: every row and column, figures in range,
finished cells reused on a re-run and only the changed method recomputed."""

from __future__ import annotations

import json

import pytest

from benchmarks import sandbox_table

TASKS = ("sst2", "agnews", "gsm8k")


def _run(capsys, sandbox: dict, out, *extra: str) -> dict:
    code = sandbox_table.main(["--json", "--sandbox", sandbox["out"], "--ratios", "0.1",
                               "--methods", "sft,asft,safelora", "--limit", "6", "--max-steps", "3",
                               "--max-new-tokens", "12", "--out", str(out), "--device", "cpu", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_table_rows_columns_and_resume(tiny_sandbox, tmp_path, capsys):
    table = _run(capsys, tiny_sandbox, tmp_path)  # no --size: the built sandbox's own size, no rebuild
    assert table["sandbox"]["size"] == "tiny"

    assert [r["method"] for r in table["reference"]] == ["base", "aligned"]
    assert [(c["method"], c["p"]) for c in table["cells"]] == [("sft", 0.1), ("asft", 0.1), ("safelora", 0.1)]
    for row in table["reference"] + table["cells"]:
        assert 0.0 <= row["harmful_score"] <= 100.0
        low, high = row["ci95"]
        assert 0.0 <= low <= row["harmful_score"] <= high <= 100.0
        assert row["harmful_total"] == 6
        assert set(row["utility"]) == set(TASKS)
        assert all(0.0 <= v <= 100.0 for v in row["utility"].values())
        assert row["eval_s"] > 0 and row["reused"] is False
    sft, asft, safelora = table["cells"]
    assert sft["steps"] == asft["steps"] == 3 and sft["train_s"] > 0
    assert safelora["from_sft_adapter"] and safelora["steps"] is None  # projected, not trained
    assert asft["final_penalty"] is not None and sft["final_penalty"] is not None
    assert table["protocol"]["max_new_tokens"] == 12 and table["protocol"]["limit"] == 6
    assert table["protocol"]["judge"]["kind"] == "keyword"
    assert [c["p"] for c in table["claims"]] == [0.1]
    assert (tmp_path / "table.json").exists()

    text = sandbox_table.markdown(table)
    header = text.splitlines()[0]
    for column in ("harmful score", *TASKS, "mean utility", "train s", "eval s"):
        assert column in header
    body = [line for line in text.splitlines()[2:] if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in body] == [
        "base (reference)", "aligned", "sft", "asft", "safelora (sft adapter projected)"]
    assert all(len(line.split("|")) == len(header.split("|")) for line in body)

    # Another lam changes only the asft cell: the rest is reused with the same figures.
    again = _run(capsys, tiny_sandbox, tmp_path, "--lam", "10")
    reused = {c["method"]: c["reused"] for c in again["reference"] + again["cells"]}
    assert reused == {"base": True, "aligned": True, "sft": True, "asft": False, "safelora": True}
    assert again["cells"][0]["harmful_score"] == sft["harmful_score"]
    assert again["cells"][0]["train_s"] == sft["train_s"]  # the recorded time, not a new one
    assert again["protocol"]["training"]["lam"] == 10


def test_bad_ratios_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sandbox_table.main(["--ratios", "0.1,1.5"])
    assert exit_info.value.code == 2
    assert "ratios must be shares in [0, 1]" in capsys.readouterr().err
