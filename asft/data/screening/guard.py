"""Llama Guard style generative screener, for GPU workers.

Prompting, generation and parsing are the evaluation judge's (``asft.evaluation.judges``);
an unreadable verdict flags the row (a broken guard must not wave data through).
"""

from __future__ import annotations

from typing import Any

from asft.data.screening.base import ScreenResult, request_text
from asft.templates import Record


class GuardScreener:
    name = "guard"

    def __init__(self, model: str, *, batch_size: int = 16, max_new_tokens: int = 10, device: str = "auto",
                 dtype: str = "auto", trust_remote_code: bool = False):
        from asft.evaluation.judges import JudgeConfig, make_judge

        self.judge = make_judge(JudgeConfig(kind="guard", model=model, batch_size=batch_size,
                                            max_new_tokens=max_new_tokens),
                                device=device, dtype=dtype, trust_remote_code=trust_remote_code)

    def describe(self) -> dict[str, Any]:
        return {**self.judge.describe(), "name": self.name, "input": "request (instruction + input) and answer"}

    def score(self, records: list[Record]) -> list[ScreenResult]:
        verdicts = self.judge.flags([request_text(r) for r in records], [r.output for r in records])
        return [ScreenResult(v.flagged, v.score, (f"guard:{v.reason}",) if v.parsed else (f"guard:{v.reason}", "guard:unparsed"))
                for v in verdicts]
