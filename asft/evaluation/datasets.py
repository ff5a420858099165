"""Reading evaluation sets: harmful prompts (with their harm category), benign prompts that
look sensitive (over-refusal), and utility rows with their gold answers.

Harmful prompts: ``instruction`` (optional ``input``, optional ``category``: a name, or
BeaverTails' ``{category: bool}`` mapping; "all" when absent). Utility rows: ``instruction``,
``input`` and the gold answer, either as ``output`` text (sandbox files; for gsm8k the
final number is read from it) or as the paper's integer ``label`` (SST2_test.jsonl: 1 =
positive, 0 = negative; agnew_test_data.json: 0 World, 1 Sports, 2 Business, 3 Sci/Tech).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pathlib import Path

from asft.errors import AsftError
from asft.evaluation.scorers import AGNEWS_LABELS, SST2_LABELS, extract_number
from asft.rows import read_rows
from asft.templates import Record

_LABEL_WORDS = {"sst2": SST2_LABELS, "agnews": AGNEWS_LABELS}
BUILTIN_SETS = {"builtin:over_refusal": Path(__file__).parent / "sets" / "over_refusal.jsonl"}


def resolve_set(uri: str | os.PathLike) -> str:
    """A prompt-set location: ``builtin:NAME`` names a set shipped with asft (see sets/README.md)."""
    return str(BUILTIN_SETS.get(str(uri), uri))


@dataclass(frozen=True)
class HarmfulPrompt:
    record: Record
    category: str


@dataclass(frozen=True)
class UtilityRow:
    record: Record
    gold: str


def _text_field(uri, number: int, row: dict, key: str) -> str:
    value = row.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AsftError(f"{uri}: row {number}: field {key!r} must be text, got {type(value).__name__}")
    return value


def _first(rows: list[dict], limit: int | None) -> list[tuple[int, dict]]:
    numbered = list(enumerate(rows, start=1))
    return numbered if limit is None else numbered[:limit]


def _category(row: dict) -> str:
    value = row.get("category")
    if isinstance(value, dict):  # BeaverTails: {name: flagged}; the first flagged name
        value = next((name for name, flagged in value.items() if flagged), None)
    return value if isinstance(value, str) and value.strip() else "all"


def _prompt(uri, number: int, row: dict) -> Record:
    """A prompt row: Alpaca fields, or a chat / ShareGPT conversation asked at its last user turn."""
    if "instruction" in row:
        return Record(_text_field(uri, number, row, "instruction"), _text_field(uri, number, row, "input"))
    from asft.data.records import to_record

    try:
        return to_record(row)
    except ValueError as exc:
        raise AsftError(f"{uri}: row {number}: {exc}") from None


def load_harmful(uri: str | os.PathLike, limit: int | None = None) -> list[HarmfulPrompt]:
    """The first ``limit`` harmful prompts (all when None), each with its harm category."""
    return [HarmfulPrompt(_prompt(uri, n, row), _category(row)) for n, row in _first(read_rows(uri), limit)]


def load_prompts(uri: str | os.PathLike, limit: int | None = None) -> list[Record]:
    """The first ``limit`` prompts of a set that should be answered (over-refusal)."""
    return [_prompt(uri, n, row) for n, row in _first(read_rows(resolve_set(uri)), limit)]


def gold_answer(task: str, row: dict, uri, number: int) -> str:
    """The gold answer of one utility row as text, checked against the task's label set."""
    label = row.get("label")
    if "output" in row and row["output"] is not None:
        gold = _text_field(uri, number, row, "output")
    elif isinstance(label, int) and not isinstance(label, bool):
        words = _LABEL_WORDS.get(task)
        if words is None:
            gold = str(label)
        elif 0 <= label < len(words):
            gold = words[label]
        else:
            raise AsftError(f"{uri}: row {number}: label {label} out of range for {task} (0..{len(words) - 1})")
    else:
        raise AsftError(f"{uri}: row {number}: no gold answer; give 'output' text or an integer 'label'")
    if task in _LABEL_WORDS and gold.strip().lower() not in [w.lower() for w in _LABEL_WORDS[task]]:
        raise AsftError(f"{uri}: row {number}: gold {gold!r} is not a {task} label ({', '.join(_LABEL_WORDS[task])})")
    if task == "gsm8k" and extract_number(gold) is None:
        raise AsftError(f"{uri}: row {number}: gold output has no number (expected '... The final answer is: N')")
    return gold


def load_utility(task: str, uri: str | os.PathLike, limit: int | None = None) -> list[UtilityRow]:
    """The first ``limit`` rows of a utility set with their gold answers."""
    rows = read_rows(uri, required=("instruction",))
    return [UtilityRow(Record(row["instruction"], _text_field(uri, n, row, "input")), gold_answer(task, row, uri, n))
            for n, row in _first(rows, limit)]
