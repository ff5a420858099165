"""The decision explained: one markdown page a reviewer reads before approving a promotion.

Candidate vs champion per gate (figures with their confidence bounds, the paired test of
each comparison with its p-value), over-refusal beside harm, the harmful score per category,
the prompts that flipped from refusal to compliance (with both answers), and where the
update went relative to the alignment direction. The PNG beside it is
:func:`asft.plots.decision_figure`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from asft.gates import EvalSummary, GateDecision

FLIPPED_SHOWN = 10


def flipped_prompts(candidate_samples: Sequence[Mapping[str, Any]], champion_samples: Sequence[Mapping[str, Any]],
                    limit: int = FLIPPED_SHOWN) -> list[dict]:
    """Harmful prompts the champion refused (not flagged) and the candidate answered (flagged)."""
    def harmful(samples):
        return {s["index"]: s for s in samples if s.get("set") == "harmful"}

    theirs = harmful(champion_samples)
    flipped = []
    for index, mine in sorted(harmful(candidate_samples).items()):
        other = theirs.get(index)
        if other is not None and mine["flagged"] and not other["flagged"] and other["instruction"] == mine["instruction"]:
            flipped.append({"index": index, "instruction": mine["instruction"], "candidate_answer": mine["answer"],
                            "champion_answer": other["answer"], "category": mine.get("category")})
    return flipped[:limit]


def _cell(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def _figures(candidate: EvalSummary, champion: EvalSummary | None) -> list[str]:
    def row(name: str, value: Any, theirs: Any) -> str:
        shown = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        return f"| {name} | {shown(value)} | {shown(theirs) if champion is not None else '-'} |"

    lines = ["| measure (%) | candidate | champion |", "|---|---|---|",
             row(f"harmful score ({candidate.judge or 'judge not named'})", candidate.harmful_score,
                 champion.harmful_score if champion else None),
             row("over-refusal", candidate.over_refusal, champion.over_refusal if champion else None)]
    lines += [row(f"harmful: {cat}", value, (champion.harmful_by_category.get(cat) if champion else None))
              for cat, value in sorted(candidate.harmful_by_category.items())]
    lines += [row(f"utility: {task}", value, (champion.utility.get(task) if champion else None))
              for task, value in sorted(candidate.utility.items())]
    return lines


def decision_markdown(decision: GateDecision, candidate: EvalSummary, champion: EvalSummary | None, *,
                      champion_version: int | None = None, flipped: Sequence[Mapping[str, Any]] = (),
                      inspection: Mapping[str, Any] | None = None) -> str:
    """The page: verdict, figures, every gate with its test, flipped prompts, the update's direction."""
    against = f"champion v{champion_version}" if champion_version is not None else "no champion yet"
    lines = [f"# Gate decision: {'PASSED' if decision.passed else 'FAILED'} (against {against})", ""]
    lines += _figures(candidate, champion)
    lines += ["", "## Gates", "", "| gate | outcome | figures | test |", "|---|---|---|---|"]
    for check in decision.checks:
        outcome = "skipped" if check.skipped else ("pass" if check.passed else "**FAIL**")
        test = (f"b={check.test.worse}, c={check.test.better}, n={check.test.n}, p={check.test.p_value:.3g}"
                if check.test else "")
        lines.append(f"| {check.name} | {outcome} | {_cell(check.detail, 400)} | {test} |")
    if champion is not None:
        lines += ["", f"## Prompts that flipped from refusal to compliance ({len(flipped)} shown)", ""]
        lines += ["| # | prompt | candidate's answer | champion's answer |", "|---|---|---|---|"]
        lines += [f"| {f['index']} | {_cell(f['instruction'])} | {_cell(f['candidate_answer'])} | "
                  f"{_cell(f['champion_answer'])} |" for f in flipped] or ["| - | none | | |"]
    if inspection:
        lines += ["", "## Where the update went", "",
                  f"Energy orthogonal to the alignment direction: {100 * inspection['mean_orth_C']:.1f} % "
                  f"(anchor C), {100 * inspection['mean_orth_P']:.1f} % (top-{inspection['top_k']} projector); "
                  f"mean cosine with V {inspection['mean_cosine']:+.3f} over {inspection['modules']} modules."]
    return "\n".join(lines) + "\n"
