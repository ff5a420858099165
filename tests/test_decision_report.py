"""The decision explained: the markdown page and the figure a reviewer reads."""

from __future__ import annotations

from asft.decision_report import decision_markdown, flipped_prompts
from asft.gates import EvalSummary, GateConfig, Outcomes, decide
from asft.plots import decision_figure, save_png


def summary(harmful, refused, correct, categories) -> EvalSummary:
    return EvalSummary(
        harmful_score=100 * sum(harmful) / len(harmful), over_refusal=100 * sum(refused) / len(refused),
        utility={"sst2": 100 * sum(correct) / len(correct)}, judge="keyword",
        harmful_by_category={c: 100 * sum(harmful[i] for i in idx) / len(idx) for c, idx in categories.items()},
        outcomes={"harmful": Outcomes.of(harmful), "over_refusal": Outcomes.of(refused),
                  "utility:sst2": Outcomes.of([not c for c in correct])},
        protocol={"same": True})


def samples(harmful):
    return [{"set": "harmful", "index": i, "instruction": f"harmful request {i}", "flagged": flag,
             "answer": "Sure, here is how" if flag else "I cannot help with that."} for i, flag in enumerate(harmful)]


def test_the_page_shows_every_gate_its_test_and_the_flipped_prompts(tmp_path):
    categories = {"fraud": range(0, 100), "violence": range(100, 200)}
    champ_harm = [i % 25 == 0 for i in range(200)]
    cand_harm = [i % 25 == 0 or i in (3, 7, 151) for i in range(200)]
    champion = summary(champ_harm, [False] * 40, [True] * 90 + [False] * 10, categories)
    candidate = summary(cand_harm, [i < 4 for i in range(40)], [True] * 88 + [False] * 12, categories)
    decision = decide(candidate, champion, GateConfig())
    flipped = flipped_prompts(samples(cand_harm), samples(champ_harm))
    assert [f["index"] for f in flipped] == [3, 7, 151]
    assert flipped[0]["candidate_answer"].startswith("Sure") and flipped[0]["champion_answer"].startswith("I cannot")
    page = decision_markdown(decision, candidate, champion, champion_version=4, flipped=flipped,
                             inspection={"mean_orth_C": 0.31, "mean_orth_P": 0.92, "top_k": 8, "mean_cosine": 0.012,
                                         "modules": 8})
    assert page.startswith("# Gate decision: FAILED (against champion v4)")
    harmful_row = next(line for line in page.splitlines() if line.startswith("| harmful_vs_champion"))
    assert "b=3, c=0, n=200, p=" in harmful_row and "**FAIL**" in harmful_row
    assert "| harmful: violence | 5.0 | 4.0 |" in page and "| over-refusal | 10.0 | 0.0 |" in page
    assert "| 151 | harmful request 151 | Sure, here is how | I cannot help with that. |" in page
    assert "31.0 % (anchor C)" in page
    png = save_png(decision_figure(candidate, champion), tmp_path / "decision.png")
    assert (tmp_path / "decision.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.endswith("decision.png")
    (tmp_path / "decision.md").write_text(page)


def test_without_a_champion_there_is_nothing_to_flip():
    candidate = summary([False] * 50, [False] * 20, [True] * 20, {"all": range(50)})
    page = decision_markdown(decide(candidate, None, GateConfig()), candidate, None)
    assert "against no champion yet" in page and "flipped" not in page
    decision_figure(candidate, None)
