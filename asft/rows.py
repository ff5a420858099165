"""Strict reading of JSON-array / JSONL row files (prompt sets, training sets, labels).

Errors name the file and line. The forgiving ingestion path (rejects instead of errors)
lives in ``asft.data``; it parses lines with :func:`parse_jsonl_line` too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

from asft.errors import AsftError
from asft.storage import read_text


def parse_jsonl_line(line: str) -> dict[str, Any]:
    """One JSONL line as an object, or ValueError saying what is wrong with it."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def iter_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | ValueError]]:
    """(line number, row or the error for that row) for a JSON array or JSONL document."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            yield exc.lineno, ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")
            return
        for index, row in enumerate(rows):
            # a JSON array has no per-row line numbers; report the 1-based element instead
            yield index + 1, row if isinstance(row, dict) else ValueError(
                f"element {index + 1}: expected a JSON object, got {type(row).__name__}")
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, parse_jsonl_line(line)
        except ValueError as exc:
            yield number, exc


def read_rows(uri: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """All rows of a JSON array or JSONL file; the first bad row is an error with its line."""
    text = read_text(uri)
    if not text.strip():
        raise AsftError(f"{uri}: file is empty; give a JSON array or JSONL file with at least one row")
    rows = []
    for line, row in iter_rows(text):
        if isinstance(row, ValueError):
            raise AsftError(f"{uri}: line {line}: {row}")
        missing = [key for key in required if not isinstance(row.get(key), str)]
        if missing:
            raise AsftError(f"{uri}: line {line}: missing text field(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise AsftError(f"{uri}: no rows found; give a JSON array or JSONL file with at least one row")
    return rows
