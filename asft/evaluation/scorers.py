"""Utility scorers (answer, gold) -> correct, as in the paper (the Wilson interval lives in asft.statistics).

- ``sst2``: the answer, stripped, lower-cased and without trailing ``.``/``!``, is exactly
  the gold word (positive / negative).
- ``agnews``: case-insensitive label-word match: the answer names the gold label (World,
  Sports, Business, Sci/Tech) and no other label.
- ``gsm8k``: the number after the last "The final answer is:", else the last number in
  the answer, equals the gold number (commas ignored, compared numerically).
- ``exact``: stripped answer == stripped gold (case-sensitive).
- ``regex:<pattern>``: the first match of the pattern (its first group, if it has one)
  in the answer equals the same extraction from the gold (or the gold itself when the
  pattern does not match it).
"""

from __future__ import annotations

import math
import re
from typing import Callable

SST2_LABELS = ("negative", "positive")  # paper files: label 0 = negative, 1 = positive
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")  # paper files: label 0..3
FINAL_ANSWER = "The final answer is:"
TASKS = ("sst2", "agnews", "gsm8k", "exact")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_AGNEWS_WORD = {label: re.compile(rf"(?<![\w/]){re.escape(label.lower())}(?![\w/])") for label in AGNEWS_LABELS}

Scorer = Callable[[str, str], bool]


def extract_number(text: str) -> float | None:
    """The number after the last "The final answer is:", else the last number; None if none."""
    tail = text.rsplit(FINAL_ANSWER, 1)[1] if FINAL_ANSWER in text else None
    for candidates in ((_NUMBER.findall(tail)[:1] if tail is not None else []), _NUMBER.findall(text)[-1:]):
        for raw in candidates:
            try:
                return float(raw.replace(",", ""))
            except ValueError:  # e.g. "1,2,3": commas that were not thousands separators
                continue
    return None


def score_sst2(answer: str, gold: str) -> bool:
    return answer.strip().lower().rstrip(".!").strip() == gold.strip().lower()


def agnews_labels_in(answer: str) -> list[str]:
    lowered = answer.lower()
    return [label for label, pattern in _AGNEWS_WORD.items() if pattern.search(lowered)]


def score_agnews(answer: str, gold: str) -> bool:
    return [label.lower() for label in agnews_labels_in(answer)] == [gold.strip().lower()]


def score_gsm8k(answer: str, gold: str) -> bool:
    predicted, expected = extract_number(answer), extract_number(gold)
    return predicted is not None and expected is not None and math.isclose(predicted, expected, rel_tol=0, abs_tol=1e-6)


def score_exact(answer: str, gold: str) -> bool:
    return answer.strip() == gold.strip()


def regex_scorer(pattern: str) -> Scorer:
    compiled = re.compile(pattern)

    def extract(text: str) -> str | None:
        match = compiled.search(text)
        if match is None:
            return None
        return (match.group(1) if compiled.groups else match.group(0)).strip()

    def score(answer: str, gold: str) -> bool:
        predicted = extract(answer)
        expected = extract(gold)
        return predicted is not None and predicted == (expected if expected is not None else gold.strip())

    return score


def make_scorer(task: str) -> Scorer:
    """The scorer for a task name: sst2, agnews, gsm8k, exact, or regex:<pattern>."""
    if task.startswith("regex:"):
        try:
            return regex_scorer(task[len("regex:"):])
        except re.error as exc:
            raise ValueError(f"utility task {task!r}: invalid regular expression ({exc})") from None
    scorers = {"sst2": score_sst2, "agnews": score_agnews, "gsm8k": score_gsm8k, "exact": score_exact}
    if task not in scorers:
        raise ValueError(f"unknown utility task {task!r}; choose {', '.join(TASKS)} or regex:<pattern>")
    return scorers[task]
