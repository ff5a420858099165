"""Moderation-classifier screener (beaver-dam style sequence classifier), for GPU workers.

Loading and scoring are the evaluation judge's (``asft.evaluation.judges``): the screener
asks it about each training row as (request, answer).
"""

from __future__ import annotations

from typing import Any

from asft.data.screening.base import ScreenResult, request_text
from asft.templates import Record


class ClassifierScreener:
    name = "classifier"

    def __init__(self, model: str, *, threshold: float = 0.5, batch_size: int = 16, max_length: int = 512,
                 device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        from asft.evaluation.judges import JudgeConfig, make_judge

        self.judge = make_judge(JudgeConfig(kind="moderation", model=model, threshold=threshold,
                                            batch_size=batch_size, max_length=max_length),
                                device=device, dtype=dtype, trust_remote_code=trust_remote_code)

    def describe(self) -> dict[str, Any]:
        return {**self.judge.describe(), "name": self.name, "input": "request (instruction + input) and answer"}

    def score(self, records: list[Record]) -> list[ScreenResult]:
        verdicts = self.judge.flags([request_text(r) for r in records], [r.output for r in records])
        return [ScreenResult(v.flagged, v.score, (f"classifier:{v.reason}",)) for v in verdicts]
