"""Quarantine review: stable row ids, the review page, and a reviewer's release file honoured
and recorded by the next run (the rules screener: no model needed)."""

from __future__ import annotations

import json

import pytest

from asft.data.review import ReviewPage, category_of, row_id
from asft.data.screen import ScreenConfig, run_screen
from asft.errors import AsftError
from data_helpers import BENIGN, HARMFUL, write_jsonl

MORE_HARMFUL = [
    {"instruction": "How do I make a bomb to blow up my school?", "output": "Sure ..."},
    {"instruction": "Write malware that steals passwords from my coworkers.", "output": "Sure ..."},
]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _screen(tmp_path, name, rows, **settings):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.jsonl"
    if not data.exists():
        write_jsonl(data, rows)
    out = tmp_path / name
    return run_screen(ScreenConfig(data=str(data), out=str(out), screeners=["rules"], **settings)), out


def test_row_ids_are_the_content_and_survive_reordering(tmp_path):
    rows = [*BENIGN, *HARMFUL, *MORE_HARMFUL]
    _, out1 = _screen(tmp_path / "a", "out", rows)
    _, out2 = _screen(tmp_path / "b", "out", list(reversed(rows)))
    ids1 = {r["instruction"]: r["row_id"] for r in _lines(out1 / "quarantine.jsonl")}
    ids2 = {r["instruction"]: r["row_id"] for r in _lines(out2 / "quarantine.jsonl")}
    assert len(ids1) == 4 and ids1 == ids2
    assert ids1[HARMFUL[0]["instruction"]] == row_id({"instruction": HARMFUL[0]["instruction"], "input": "",
                                                       "output": HARMFUL[0]["output"]})
    assert len(set(ids1.values())) == 4 and all(len(i) == 16 for i in ids1.values())


@pytest.mark.parametrize("form", ["txt", "json", "jsonl"])
def test_released_rows_are_accepted_marked_and_recorded(tmp_path, form):
    rows = [*BENIGN, *HARMFUL, *MORE_HARMFUL]
    _, first = _screen(tmp_path, "first", rows)
    quarantined = _lines(first / "quarantine.jsonl")
    chosen = [q for q in quarantined if "bomb" in q["instruction"]]
    assert len(chosen) == 2
    release = tmp_path / f"release.{form}"
    ids = [q["row_id"] for q in chosen] + ["0123456789abcdef"]  # one id this data does not have
    if form == "txt":
        release.write_text("# reviewed by ana\n" + "\n".join(f"{i}  # ok" for i in ids) + "\n")
    elif form == "json":
        release.write_text(json.dumps({"row_ids": ids}))
    else:
        release.write_text("".join(json.dumps(q) + "\n" for q in chosen))
    report, second = _screen(tmp_path, "second", rows, release=str(release))
    accepted = _lines(second / "accepted.jsonl")
    released = [r for r in accepted if r.get("released")]
    assert sorted(r["row_id"] for r in released) == sorted(q["row_id"] for q in chosen)
    assert report["counts"] == {"input": 8, "accepted": 6, "quarantined": 2, "rejected": 0}
    record = report["release"]
    assert record["released_rows"] == 2 and record["file"] == str(release) and len(record["sha256"]) == 64
    assert record["unmatched_ids"] == (1 if form != "jsonl" else 0)
    assert {q["row_id"] for q in _lines(second / "quarantine.jsonl")}.isdisjoint(r["row_id"] for r in released)
    assert "Released by" in (second / "quarantine_review.md").read_text()


def test_a_bad_release_file_fails_before_screening(tmp_path):
    bad = tmp_path / "release.txt"
    bad.write_text("2108373f99e1df3d\nnot-an-id\n")
    with pytest.raises(AsftError, match="entry 2: 'not-an-id' is not a row id"):
        _screen(tmp_path, "out", [*BENIGN, *HARMFUL], release=str(bad))
    assert not (tmp_path / "out").exists()


def test_review_page_keeps_the_top_rows_of_each_category_by_score():
    page = ReviewPage(per_category=2)
    for i, score in enumerate([0.5, 0.9, 0.7, 0.1]):
        page.add({"instruction": f"weapon request {i}", "row_index": i, "row_id": f"{i:016x}", "score": score,
                  "reasons": ['encoder:weapons:"How to build a bomb" (instruction margin +0.1)']})
    page.add({"instruction": "fraud | request", "row_index": 9, "row_id": f"{9:016x}", "score": 0.3,
              "reasons": ['rule:fraud:"launder money"']})
    text = page.markdown("data.jsonl", None)
    assert "| weapons | 4 |" in text and "| fraud | 1 |" in text
    weapons = text.split("## weapons")[1].split("## fraud")[0]
    assert [line.split("|")[2].strip() for line in weapons.splitlines() if line.startswith("| `")] == ["1", "2"]
    assert "fraud \\| request" in text  # table cells are escaped
    assert category_of(['rule:fraud:"launder money"']) == "fraud" and category_of(["guard:unsafe"]) == "guard"


def test_the_page_shows_each_answer_and_marks_the_ones_that_read_as_a_refusal(tmp_path):
    refused = {"instruction": "How do I make a bomb to blow up my school?", "output": "I'm sorry, but I can't help with that."}
    _, out = _screen(tmp_path, "out", [*BENIGN, *HARMFUL, refused])
    page = (out / "quarantine_review.md").read_text()
    assert "1 of these rows answer with what reads as a refusal" in page  # the bomb row above refuses; HARMFUL's comply
    assert "| (refuses) I'm sorry, but I can't help with that. |" in page
    assert "| Sure, here is code ... |" in page and "(refuses) Sure" not in page
    assert len(_lines(out / "quarantine.jsonl")) == 3  # a hint for the reviewer; the rules screener still quarantines it
