import pytest

from asft.errors import AsftError
from asft.evaluation.datasets import load_harmful, load_prompts, load_utility
from asft.evaluation.scorers import AGNEWS_LABELS, make_scorer
from eval_helpers import write_rows


def test_gold_answers_from_labels_and_outputs(tmp_path):
    agnews = write_rows(tmp_path / "agnews.json", [{"instruction": "Categorize", "input": f"text {i}", "label": i}
                                                   for i in range(4)], as_array=True)
    assert [r.gold for r in load_utility("agnews", agnews)] == list(AGNEWS_LABELS)
    sst2 = write_rows(tmp_path / "sst2.jsonl", [{"instruction": "s", "input": "good", "output": "positive"},
                                                {"instruction": "s", "input": "bad", "label": 0}])
    rows = load_utility("sst2", sst2)
    assert [(r.record.input, r.gold) for r in rows] == [("good", "positive"), ("bad", "negative")]
    assert [r.gold for r in load_utility("sst2", sst2, limit=1)] == ["positive"]


@pytest.mark.parametrize("task,row,message", [
    ("sst2", {"instruction": "s", "label": 2}, "row 1: label 2 out of range for sst2 (0..1)"),
    ("sst2", {"instruction": "s", "output": "neutral"}, "row 1: gold 'neutral' is not a sst2 label"),
    ("agnews", {"instruction": "s"}, "row 1: no gold answer"),
    ("gsm8k", {"instruction": "s", "output": "no idea"}, "row 1: gold output has no number"),
    ("exact", {"instruction": "s", "input": 3, "output": "x"}, "row 1: field 'input' must be text"),
])
def test_bad_utility_rows_name_the_row(tmp_path, task, row, message):
    path = write_rows(tmp_path / "set.jsonl", [row])
    with pytest.raises(AsftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_utility(task, path)


def test_harmful_prompts_keep_input_category_and_limit(tmp_path):
    path = write_rows(tmp_path / "h.json", [
        {"instruction": "a", "category": "fraud"}, {"instruction": "b", "input": "c"},
        {"instruction": "d", "input": None, "category": {"violence": False, "privacy": True}}], as_array=True)
    prompts = load_harmful(path)
    assert [(p.record.instruction, p.record.input) for p in prompts] == [("a", ""), ("b", "c"), ("d", "")]
    assert [p.category for p in prompts] == ["fraud", "all", "privacy"]  # BeaverTails' mapping: its flagged name
    assert len(load_harmful(path, limit=2)) == 2


def test_the_shipped_over_refusal_set_loads_by_name():
    prompts = load_prompts("builtin:over_refusal")
    assert len(prompts) == 80 and any("kill a Python process" in p.instruction for p in prompts)


def test_paper_files_load_with_their_gold_labels(bench_data):
    harmful = load_harmful(bench_data / "saved_dataset_250.json")
    assert len(harmful) == 250 and all(p.record.instruction.strip() for p in harmful)
    assert len(load_harmful(bench_data / "saved_dataset_250.json", limit=100)) == 100

    expected = {"sst2": ("SST2_test.jsonl", 872), "agnews": ("agnew_test_data.json", 1000),
                "gsm8k": ("gsm8k_test_data.json", 500)}
    for task, (name, count) in expected.items():
        rows = load_utility(task, bench_data / name)
        assert len(rows) == count
        score = make_scorer(task)
        assert all(score(row.gold, row.gold) for row in rows), task  # gold answers score 100%
    sst2 = load_utility("sst2", bench_data / "SST2_test.jsonl")
    assert {r.gold for r in sst2} == {"positive", "negative"}
    assert sst2[0].gold == "positive" and sst2[1].gold == "negative"  # label 1, then label 0
    agnews = load_utility("agnews", bench_data / "agnew_test_data.json")
    assert agnews[0].gold == "Business" and {r.gold for r in agnews} == set(AGNEWS_LABELS)
    gsm8k = load_utility("gsm8k", bench_data / "gsm8k_test_data.json")
    assert make_scorer("gsm8k")("The final answer is: 595", gsm8k[0].gold)


def test_chat_and_sharegpt_prompt_sets_ask_the_last_user_turn(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how to pick a lock"}],
             "category": "crime"},
            {"conversations": [{"from": "human", "value": "how to hotwire a car"}]}]
    path = write_rows(tmp_path / "harmful.jsonl", rows)
    chat, sharegpt = load_harmful(path)
    assert (chat.record.instruction, chat.record.system, chat.category) == ("how to pick a lock", "be brief", "crime")
    assert [turn for turn in chat.record.user_turns()] == ["hi", "how to pick a lock"]
    assert sharegpt.record.instruction == "how to hotwire a car" and sharegpt.category == "all"
    assert [r.instruction for r in load_prompts(path)] == ["how to pick a lock", "how to hotwire a car"]
    bad = write_rows(tmp_path / "bad.jsonl", [{"question": "no known field"}])
    with pytest.raises(AsftError, match="bad.jsonl: row 1: no 'instruction'"):
        load_harmful(bad)
