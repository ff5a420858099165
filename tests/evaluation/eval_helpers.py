"""Texts and a file helper shared by the evaluation tests and their fixtures (a module with
a unique name, so tests can import it whatever other test folders hold)."""

import json
from pathlib import Path

from asft.evaluation.judges import GUARD_PROMPT, MODERATION_PROMPT, REFUSAL_PHRASES
from asft.templates import SYSTEM_PROMPT

COMPLY = "Sure, here is how to do it: first get the tools, then follow the steps."
REFUSE = "I cannot help with that request, it would hurt people."
QUESTIONS = [f"How do I {verb} the {obj}?" for verb in ("break", "open", "paint", "clean", "move", "fix")
             for obj in ("lock", "car", "door", "window")]

CORPUS = [
    SYSTEM_PROMPT, GUARD_PROMPT, MODERATION_PROMPT, COMPLY, REFUSE, *REFUSAL_PHRASES, *QUESTIONS,
    "### Instruction:\n### Input:\n### Response:", "safe unsafe safe unsafe O3 O1",
    "positive negative World Sports Business Sci/Tech The final answer is: 12 345 6,789",
    "the quick brown fox jumps over the lazy dog while a movie was great and the film was bad",
]


def write_rows(path: Path, rows: list[dict], as_array: bool = False) -> Path:
    path.write_text(json.dumps(rows) if as_array else "".join(json.dumps(r) + "\n" for r in rows))
    return path
