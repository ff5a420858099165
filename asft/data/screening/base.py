"""The screener interface: score records, say which are harmful and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from asft.templates import Record


@dataclass(frozen=True)
class ScreenResult:
    flagged: bool
    score: float  # higher = more harmful; each screener documents its scale
    reasons: tuple[str, ...] = field(default=())
    refused: bool = False  # not flagged only because the harmful-looking request is answered with a refusal


class Screener(Protocol):
    name: str

    def describe(self) -> dict[str, Any]: ...

    def score(self, records: list[Record]) -> list[ScreenResult]: ...


def request_text(record: Record) -> str:
    """What the user asks: every user turn (the last one: the instruction, then its input)."""
    return "\n\n".join(record.user_turns())


def exchange_texts(record: Record, include_output: bool) -> list[str]:
    """Each user turn on its own, followed by its answer when ``include_output``: a rule must
    not match across two turns. A single-turn record gives one text, as it always did."""
    return [user + (f"\n\n{answer}" if include_output else "") for user, answer in record.exchanges()]


class Combined:
    """Several screeners as one: ``any`` flags when one flags, ``all`` when every one does.
    The score is the max (any) or min (all) of the members'; reasons are joined."""

    def __init__(self, screeners: list[Screener], mode: Literal["any", "all"] = "any"):
        self.screeners, self.mode = screeners, mode
        self.name = f"{mode}(" + ",".join(s.name for s in screeners) + ")"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "combine": self.mode, "screeners": [s.describe() for s in self.screeners]}

    def score(self, records: list[Record]) -> list[ScreenResult]:
        per_screener = [s.score(records) for s in self.screeners]
        pick, merge = (any, max) if self.mode == "any" else (all, min)
        combined = []
        for results in zip(*per_screener):
            flagged = pick(r.flagged for r in results)
            reasons = tuple(reason for r in results if r.flagged or not flagged for reason in r.reasons)
            combined.append(ScreenResult(flagged, merge(r.score for r in results), reasons))
        return combined


def combine(screeners: list[Screener], mode: Literal["any", "all"] = "any") -> Screener:
    return screeners[0] if len(screeners) == 1 else Combined(screeners, mode)
