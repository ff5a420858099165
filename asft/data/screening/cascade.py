"""A cascade: the cheap screener decides the rows it is sure of, an expensive judge (the
classifier or guard screener, on a GPU worker) reads only the uncertain band between them.

The band is in the cheap screener's probability: below ``clear_below`` a row is accepted, above
``flag_above`` quarantined, in between the judge decides. The judges read the pair (request and
answer), so the band is also where a harmful request answered with a refusal gets its due. The
default band, 0.05-0.99, comes from the default screener's held-out fifth of its training data
(RESULTS.md, session 15): 5 of its 6 missed harmful rows and all 10 of its false positives lie
inside it, and 9 % of the benign rows and 47 % of the harmful ones reach the judge.
"""

from __future__ import annotations

from typing import Any

from asft.data.screening.base import Screener, ScreenResult
from asft.templates import Record


class Cascade:
    """``first`` on every row; ``judge`` on the rows whose first score lies in [clear_below, flag_above]."""

    def __init__(self, first: Screener, judge: Screener, clear_below: float, flag_above: float):
        self.first, self.judge, self.clear_below, self.flag_above = first, judge, clear_below, flag_above
        self.name = f"cascade({first.name};{judge.name})"
        self.rows = self.judged_rows = 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "combine": "cascade", "clear_below": self.clear_below, "flag_above": self.flag_above,
                "rows": self.rows, "judged_rows": self.judged_rows,
                "screeners": [self.first.describe(), self.judge.describe()]}

    def score(self, records: list[Record]) -> list[ScreenResult]:
        cheap = self.first.score(records)
        band = [i for i, r in enumerate(cheap) if self.clear_below <= r.score <= self.flag_above]
        judged = dict(zip(band, self.judge.score([records[i] for i in band]) if band else []))
        self.rows += len(records)
        self.judged_rows += len(band)
        results = []
        for i, r in enumerate(cheap):
            if i in judged:
                verdict = judged[i]
                results.append(ScreenResult(verdict.flagged, r.score, (*verdict.reasons, *r.reasons)))
            else:  # the cheap screener is sure; its own refusal rule still holds
                flagged = r.score > self.flag_above and not r.refused
                results.append(ScreenResult(flagged, r.score, r.reasons, refused=r.refused and r.score > self.flag_above))
        return results
