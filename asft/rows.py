"""Strict reading of row files (prompt sets, training sets, labels): the first bad row is an
error naming its file and line.

The rows come from the one reader, ``asft.data.sources``, so every source ``asft screen``
takes works here too (folders and globs of shards, s3 prefixes, compression, JSON, JSONL,
CSV, Parquet, Arrow). The forgiving path (rejects instead of errors) is ``asft.data.ingest``.
"""

from __future__ import annotations

import io
import os
from typing import Any, Iterator

from asft.data.sources import RawRow, SourceReader, parse_jsonl_line, parse_stream
from asft.errors import AsftError

__all__ = ["iter_rows", "parse_jsonl_line", "read_rows"]


def iter_rows(text: str) -> Iterator[tuple[int, RawRow]]:
    """(line number, row or the error for that row) for a JSON array or JSONL document in memory."""
    yield from parse_stream("<text>", "json", io.BufferedReader(io.BytesIO(text.encode("utf-8"))))


def read_rows(uri: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """All rows of a source; the first bad row is an error with its file and line. A file
    without a known extension is read as JSON (an array, or one object per line)."""
    uri = str(uri)
    rows = []
    for file, line, row in SourceReader(uri, unknown_format="json"):
        if isinstance(row, ValueError):
            raise AsftError(f"{file}: line {line}: {row}")
        missing = [key for key in required if not isinstance(row.get(key), str)]
        if missing:
            raise AsftError(f"{file}: line {line}: missing text field(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise AsftError(f"{uri}: file is empty or holds no rows; give a JSON array, JSONL, CSV or Parquet file with at least one row")
    return rows
