"""Read fine-tuning data from any source and format into ``Record`` rows, losing none.

Every input row ends as exactly one ``Row`` (with its 0-based ``row_index``) or one
``Reject`` (file, line, reason). Malformed rows either fail the run or become rejects,
as the ``on_malformed`` policy says; a file that cannot be read at all is an error.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from asft import storage
from asft.data.records import FieldMap, RowError, Schema, check_size, to_record
from asft.errors import AsftError
from asft.rows import iter_rows, parse_jsonl_line
from asft.templates import Record

Format = Literal["auto", "json", "jsonl", "csv", "parquet"]
EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
HF_PREFIX = "hf://datasets/"


class IngestConfig(BaseModel):
    """How to read a source and what counts as a malformed row."""

    model_config = ConfigDict(extra="forbid")

    format: Format = Field("auto", description="auto (by extension) | json | jsonl | csv | parquet.")
    schema_: Schema = Field("auto", alias="schema", description="auto (per row) | alpaca | chat | prompt-response.")
    fields: FieldMap = Field(default_factory=FieldMap, description="Column names of each schema.")
    on_malformed: Literal["reject", "fail"] = Field("reject", description="reject: report malformed rows and go on; fail: stop at the first with file:line.")
    duplicates: Literal["keep", "drop"] = Field("keep", description="Exact duplicate rows: keep them (reported) or drop them (counted as rejected, reason 'duplicate').")
    max_chars: int = Field(100_000, ge=1, le=100_000_000, description="Rows longer than this (instruction + input + output characters) are rejected.")
    require_output: bool = Field(True, description="Reject rows without an answer (training rows need one).")
    hf_split: str = Field("train", description="Split of a Hugging Face dataset.")


@dataclass(frozen=True)
class Row:
    row_index: int  # 0-based position among the source's rows
    line: int  # 1-based line (JSONL, CSV) or element/row number (JSON array, Parquet)
    record: Record
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Reject:
    row_index: int
    file: str
    line: int
    reason: str  # malformed | encoding | missing_field | too_long | duplicate
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"row_index": self.row_index, "file": self.file, "line": self.line,
                "reason": self.reason, "detail": self.detail}


@dataclass
class Ingested:
    source: str
    format: str
    input_rows: int
    rows: list[Row]
    rejects: list[Reject]
    sha256: str
    duplicate_groups: list[list[int]]  # row indices of identical rows, first occurrence first


# --- reading raw rows -------------------------------------------------------------------

def detect_format(uri: str, format: Format = "auto") -> str:
    if format != "auto":
        return format
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise AsftError(f"{uri}: cannot tell the format from the extension; pass --format json|jsonl|csv|parquet")


def _decode_lines(uri: str, data: bytes) -> Iterator[tuple[int, str | ValueError]]:
    """JSONL lines; a line that is not UTF-8 becomes that row's error, not the file's."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            yield number, raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            yield number, RowError("encoding", f"not UTF-8 (byte {exc.start}); re-encode the file as UTF-8")


def _raw_rows(uri: str, fmt: str, data: bytes) -> Iterator[tuple[int, dict[str, Any] | ValueError]]:
    """(line, raw row or the reason it is malformed) for every row of the file."""
    if fmt == "jsonl":
        for number, line in _decode_lines(uri, data):
            if isinstance(line, ValueError):
                yield number, line
            elif line.strip():
                try:
                    yield number, parse_jsonl_line(line)
                except ValueError as exc:
                    yield number, exc
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise AsftError(f"{uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        for number, row in enumerate(table.to_pylist(), start=1):
            yield number, row
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AsftError(f"{uri}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None
    if fmt == "json":
        if not text.lstrip().startswith("["):
            raise AsftError(f"{uri}: not a JSON array; use --format jsonl for one object per line")
        rows = list(iter_rows(text))
        if len(rows) == 1 and isinstance(rows[0][1], ValueError) and "invalid JSON" in str(rows[0][1]):
            raise AsftError(f"{uri}: line {rows[0][0]}: {rows[0][1]}; the array cannot be split into rows, fix the file")
        yield from rows
        return
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None:
            return
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, ValueError(f"malformed CSV ({exc})")
                continue
            if None in row or any(v is None for v in row.values()):
                yield reader.line_num, ValueError(f"row does not have the header's {len(reader.fieldnames)} columns")
            else:
                yield reader.line_num, row
        return
    raise AsftError(f"unknown format {fmt!r}; choose json, jsonl, csv or parquet")


def _hf_rows(name: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise AsftError(f"reading the Hugging Face dataset {name!r} needs the datasets library: pip install datasets") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
    try:
        return list(datasets.load_dataset(name, split=split))
    except Exception as exc:  # datasets raises many types for missing/unreachable datasets
        hint = ("HF_HUB_OFFLINE=1 is set: download the dataset while online or export it to a file"
                if offline else "check the name, split and network")
        raise AsftError(f"cannot load Hugging Face dataset {name!r} split {split!r} ({type(exc).__name__}); {hint}") from None


def ingest(source: str, config: IngestConfig | None = None) -> Ingested:
    """Every row of ``source`` (a path, fsspec URI or ``hf://datasets/NAME``) as a Row or a Reject."""
    config = config or IngestConfig()
    source = str(source)
    if source.startswith(HF_PREFIX):
        name = source[len(HF_PREFIX):]
        raw_rows = list(enumerate(_hf_rows(name, config.hf_split), start=1))
        fmt, digest = "hf-dataset", storage.sha256_bytes(json.dumps([r for _, r in raw_rows], default=str, sort_keys=True).encode())
    else:
        fmt = detect_format(source, config.format)
        data = storage.read_bytes(source)
        if not data.strip():
            raise AsftError(f"{source}: file is empty; give a file with at least one row")
        digest = storage.sha256_bytes(data)
        raw_rows = list(_raw_rows(source, fmt, data))
    if not raw_rows:
        raise AsftError(f"{source}: no rows found; give a file with at least one row")

    rows: list[Row] = []
    rejects: list[Reject] = []
    first_seen: dict[Record, int] = {}
    groups: dict[int, list[int]] = {}
    for row_index, (line, raw) in enumerate(raw_rows):
        try:
            if isinstance(raw, ValueError):
                raise raw
            record = to_record(raw, config.schema_, config.fields)
            if config.require_output and not record.output.strip():
                raise RowError("missing_field", f"missing or empty answer ({config.fields.output!r}, {config.fields.messages!r} assistant or response)")
            check_size(record, config.max_chars)
        except ValueError as exc:
            if config.on_malformed == "fail":
                raise AsftError(f"{source}:{line}: {exc} (use --on-malformed reject to report such rows and go on)") from None
            rejects.append(Reject(row_index, source, line, getattr(exc, "code", "malformed"), str(exc)))
            continue
        if record in first_seen:
            first = first_seen[record]
            groups.setdefault(first, [first]).append(row_index)
            if config.duplicates == "drop":
                rejects.append(Reject(row_index, source, line, "duplicate", f"duplicate of row {first}"))
                continue
        else:
            first_seen[record] = row_index
        rows.append(Row(row_index, line, record, raw))
    return Ingested(source, fmt, len(raw_rows), rows, rejects, digest, list(groups.values()))
