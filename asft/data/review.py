"""Quarantine is reviewed, not only removed: a stable id per row, the reviewer's release file,
and the review page (``quarantine_review.md``) each screening run writes.

A row's id is the sha256 of its content (the row as ``accepted.jsonl`` writes it), so it is
the same in every run, whatever the file order or the data window. A reviewer releases rows
by listing their ids in a file (one id per line, a JSON list or ``{"row_ids": [...]}``, or
lines copied from ``quarantine.jsonl``); the next run accepts those rows, marks them
``released`` and records the file's hash and what it matched.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections import Counter
from typing import Any

from asft import storage
from asft.data.screening.refusals import is_refusal
from asft.errors import AsftError

ID_CHARS = 16
REFUSES = "(refuses)"
_ID = re.compile(rf"^[0-9a-f]{{{ID_CHARS}}}$")
REVIEW_FILE = "quarantine_review.md"


def row_id(fields: dict[str, Any]) -> str:
    """The content id of a row (its instruction/input/output or messages)."""
    text = json.dumps(fields, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_CHARS]


def _ids_in(uri: str, text: str) -> list[str]:
    stripped = text.strip()
    if uri.endswith(".jsonl"):
        return [_id_of(json.loads(line), uri, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if stripped.startswith(("[", "{")):
        payload = json.loads(stripped)
        ids = payload.get("row_ids") if isinstance(payload, dict) else payload
        if not isinstance(ids, list):
            raise AsftError(f"release file {uri}: a JSON file holds a list of row ids or {{\"row_ids\": [...]}}")
        return [_checked(i, uri, n) for n, i in enumerate(ids, 1)]
    lines = [(n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.splitlines(), 1)]
    return [_checked(value, uri, n) for n, value in lines if value]


def _id_of(row: Any, uri: str, line: int) -> str:
    if not isinstance(row, dict) or "row_id" not in row:
        raise AsftError(f"release file {uri} line {line}: a JSONL release file holds rows with a row_id "
                        "(lines copied from quarantine.jsonl)")
    return _checked(row["row_id"], uri, line)


def _checked(value: Any, uri: str, where: int) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise AsftError(f"release file {uri} entry {where}: {value!r} is not a row id ({ID_CHARS} hex characters, "
                        "the row_id column of quarantine.jsonl)")
    return value


class Release:
    """The rows a reviewer let through: read and checked before any screening work."""

    def __init__(self, uri: str):
        self.uri = uri
        try:
            text = storage.read_text(uri)
            self.ids = set(_ids_in(uri, text))
        except json.JSONDecodeError as exc:
            raise AsftError(f"release file {uri}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.matched: set[str] = set()

    def releases(self, rid: str) -> bool:
        if rid in self.ids:
            self.matched.add(rid)
            return True
        return False

    def record(self) -> dict[str, Any]:
        """What the report keeps: the file, its hash, what it released and what it did not find."""
        unmatched = sorted(self.ids - self.matched)
        return {"file": self.uri, "sha256": self.sha256, "ids": len(self.ids), "released_rows": len(self.matched),
                "unmatched_ids": len(unmatched), "unmatched_examples": unmatched[:20]}


def category_of(reasons: list[str]) -> str:
    """The harm category a screener's first reason names (``encoder:weapons:...``), else the screener."""
    parts = reasons[0].split(":") if reasons else ["unknown"]
    return parts[1] if len(parts) > 2 else parts[0].split(" ")[0]


class ReviewPage:
    """The top quarantined rows of each category by score, kept in bounded memory as rows stream."""

    def __init__(self, per_category: int = 10, chars: int = 160):
        self.per_category, self.chars = per_category, chars
        self.top: dict[str, list[tuple[float, int, dict]]] = {}
        self.counts: Counter = Counter()
        self.refusals, self.top_refusals = 0, []  # accepted: a harmful-looking request answered with a refusal
        self.answered_by_refusal = 0  # quarantined rows whose answer reads as a refusal: a hint for the reviewer

    def add(self, row: dict[str, Any]) -> None:
        category = category_of(row["reasons"])
        self.counts[category] += 1
        self.answered_by_refusal += is_refusal(_answer(row))
        self._keep(self.top.setdefault(category, []), row)

    def add_refusal(self, row: dict[str, Any]) -> None:
        self.refusals += 1
        self._keep(self.top_refusals, row)

    def _keep(self, heap: list, row: dict[str, Any]) -> None:
        item = (float(row["score"]), -row["row_index"], row)
        (heapq.heappush if len(heap) < self.per_category else heapq.heappushpop)(heap, item)

    def _refusal_lines(self) -> list[str]:
        lines = ["", f"## Accepted as refusals: {self.refusals} rows", "",
                 "Their request reads harmful, but the answer refuses and gives nothing else, so they teach refusing "
                 "(safety data; kept because the run set `encoder.keep_refusals=true`).", "",
                 "| row_id | row | score | request | answer |", "|---|---|---|---|---|"]
        return lines + [f"| `{row['row_id']}` | {row['row_index']} | {score:.3f} | {_cell(_request(row), self.chars)} "
                         f"| {_cell(_answer(row), 80)} |"
                         for score, _, row in sorted(self.top_refusals, key=lambda item: (-item[0], -item[1]))]

    def markdown(self, source: Any, release: dict[str, Any] | None) -> str:
        lines = [f"# Quarantine review: {sum(self.counts.values())} rows", "", f"Source: `{source}`", "",
                 "| category | rows |", "|---|---|"]
        lines += [f"| {c} | {n} |" for c, n in self.counts.most_common()]
        if self.answered_by_refusal:
            lines += ["", f"{self.answered_by_refusal} of these rows answer with what reads as a refusal (marked "
                      f"{REFUSES} below): safety data, if you trust where the answers come from; release them, or "
                      "screen with `encoder.keep_refusals=true`."]
        if release:
            lines += ["", f"Released by `{release['file']}`: {release['released_rows']} rows "
                      f"({release['unmatched_ids']} of its ids matched no quarantined row)."]
        for category, _ in self.counts.most_common():
            lines += ["", f"## {category}: top {min(self.per_category, self.counts[category])} by score", "",
                      "| row_id | row | score | request | answer | reason |", "|---|---|---|---|---|---|"]
            for score, _, row in sorted(self.top[category], key=lambda item: (-item[0], -item[1])):
                answer = _answer(row)
                lines.append(f"| `{row['row_id']}` | {row['row_index']} | {score:.3f} | {_cell(_request(row), self.chars)} "
                             f"| {REFUSES + ' ' if is_refusal(answer) else ''}{_cell(answer, 60)} "
                             f"| {_cell(row['reasons'][0] if row['reasons'] else '', 80)} |")
        lines += self._refusal_lines() if self.refusals else []
        lines += ["", "To release rows, list their row_id (one per line, or copy their lines from quarantine.jsonl) "
                  "in a file and pass it as `release` (`asft screen release=FILE`, or the pipeline's "
                  "`inputs.screening_release`): the next run accepts them and records the file."]
        return "\n".join(lines) + "\n"


def _request(row: dict[str, Any]) -> str:
    if "messages" in row:
        return next((m["content"] for m in reversed(row["messages"]) if m["role"] == "user"), "")
    return " / ".join(part for part in (row.get("instruction", ""), row.get("input", "")) if part)


def _answer(row: dict[str, Any]) -> str:
    if "messages" in row:
        return next((m["content"] for m in reversed(row["messages"]) if m["role"] == "assistant"), "")
    return row.get("output", "")


def _cell(text: str, chars: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= chars else text[:chars - 1] + "…"
