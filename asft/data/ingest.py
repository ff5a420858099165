"""Read fine-tuning data from any source and format into ``Record`` rows, losing none.

Every input row ends as exactly one ``Row`` (with its 0-based ``row_index``) or one
``Reject`` (file, line, reason). Malformed rows either fail the run or become rejects,
as the ``on_malformed`` policy says; a file that cannot be read at all is an error, and so
is a source whose rows are mostly rejected (``max_reject_share``), once every row is counted.

``IngestStream`` reads a source chunk by chunk in bounded memory (screening uses it);
``ingest`` collects the same stream into lists for callers that want every row at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

import numpy as np
from pydantic import Field

from asft.data.records import FieldMap, RowError, Schema, check_size, to_record
from asft.data.sources import Format, Source, SourceReader, source_name
from asft.errors import AsftError
from asft.forms import FormModel
from asft.templates import Record


class IngestConfig(FormModel):
    """How to read a source and what counts as a malformed row."""

    format: Format = Field("auto", description="auto (by extension) | json | jsonl | csv | parquet | arrow; compression (gzip, zstd, bz2) is found by extension or magic bytes.")
    schema_: Schema = Field("auto", alias="schema", description="auto (per row) | alpaca | chat | prompt-response.")
    fields: FieldMap = Field(default_factory=FieldMap, description="Column names of each schema.")
    on_malformed: Literal["reject", "fail"] = Field("reject", description="reject: report malformed rows and go on; fail: stop at the first with file:line.")
    max_reject_share: float = Field(0.5, ge=0.0, le=1.0, description="Fail (after counting every row) when more than this share of the rows is malformed (duplicates dropped by policy do not count).")
    duplicates: Literal["keep", "drop"] = Field("keep", description="Exact duplicate rows: keep them (reported) or drop them (counted as rejected, reason 'duplicate').")
    max_chars: int = Field(100_000, ge=1, le=100_000_000, description="Rows longer than this (instruction + input + output characters) are rejected.")
    require_output: bool = Field(True, description="Reject rows without an answer (training rows need one).")
    hf_split: str = Field("train", description="Split of a Hugging Face dataset (hub or save_to_disk folder).")
    json_array_max_mb: int = Field(1024, ge=1, description="A JSON array is read whole: refuse larger ones (JSONL streams at any size).")


@dataclass(frozen=True)
class Row:
    row_index: int  # 0-based position among the source's rows
    line: int  # 1-based line (JSONL, CSV) or element/row number (JSON array, Parquet) in its file
    record: Record
    raw: dict[str, Any] = field(repr=False, compare=False)
    file: str = ""


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
    files: list[dict[str, Any]] = field(default_factory=list)  # every file read: uri, format, size, sha256, rows


class FirstSeen:
    """The first row index of every distinct record, by its 64-bit hash: 12 bytes a distinct row.

    Sorted runs of (hash, first row) are looked up per chunk with ``searchsorted`` and merged
    like a binary counter up to ``FROZEN`` entries (so a merge never copies more than that).
    Two different records with the same 64-bit hash would count as duplicates: about
    n^2 / 2^65 for n distinct rows (1e-5 at 20 million)."""

    FROZEN = 1 << 20

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def first_rows(self, hashes: list[int], rows: list[int]) -> list[int]:
        """For each (hash, row) in row order: the first row with that hash (the row itself if new)."""
        unique, position, inverse = np.unique(np.array(hashes, dtype=np.int64), return_index=True, return_inverse=True)
        first = np.asarray(rows, dtype=np.uint32)[position]
        known = np.zeros(len(unique), dtype=bool)
        for run_hashes, run_rows in self._runs:
            at = np.minimum(np.searchsorted(run_hashes, unique), len(run_hashes) - 1)
            hit = run_hashes[at] == unique
            first[hit] = run_rows[at[hit]]
            known |= hit
        self._add(unique[~known], first[~known])
        return first[inverse].tolist()

    def _add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        if not len(hashes):
            return
        run = (hashes, rows)
        while self._runs and len(run[0]) >= len(self._runs[-1][0]) and len(self._runs[-1][0]) < self.FROZEN:
            run = _merge(self._runs.pop(), run)
        self._runs.append(run)


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs with no hash in common, as one sorted run."""
    at = np.searchsorted(a[0], b[0]) + np.arange(len(b[0]))
    hashes, rows = np.empty(len(a[0]) + len(b[0]), np.int64), np.empty(len(a[0]) + len(b[0]), np.uint32)
    rest = np.ones(len(hashes), dtype=bool)
    rest[at] = False
    hashes[at], rows[at], hashes[rest], rows[rest] = b[0], b[1], a[0], a[1]
    return hashes, rows


class IngestStream:
    """Every row of a source as a Row or a Reject, in row order, a chunk at a time. The totals
    (input_rows, files, sha256, duplicate_groups, reject_reasons) are complete once the
    stream is exhausted, which is also when a source with too many rejects fails."""

    def __init__(self, source: Source, config: IngestConfig | None = None, chunk_rows: int = 2048):
        self.source = source if isinstance(source, list) else str(source)
        self.name = source_name(self.source)
        self.config, self.chunk_rows = config or IngestConfig(), chunk_rows
        self.reader = SourceReader(self.source, self.config.format, self.config.hf_split, self.config.json_array_max_mb)
        self.input_rows = 0
        self.reject_reasons: Counter[str] = Counter()
        self.examples: dict[str, Reject] = {}  # the first reject of each reason, for the error
        self._first_seen = FirstSeen()
        self._groups: dict[int, list[int]] = {}

    def chunks(self) -> Iterator[list[Row | Reject]]:
        raw_rows = iter(self.reader)
        while chunk := list(islice(raw_rows, self.chunk_rows)):
            start, self.input_rows = self.input_rows, self.input_rows + len(chunk)
            yield self._judge(start, chunk)
        self._check_totals()

    def __iter__(self) -> Iterator[Row | Reject]:
        for chunk in self.chunks():
            yield from chunk

    def _judge(self, start: int, chunk: list[tuple[str, int, Any]]) -> list[Row | Reject]:
        out = []
        for row_index, (file, line, raw) in enumerate(chunk, start=start):
            record = raw if isinstance(raw, ValueError) else self._record(raw)
            if isinstance(record, ValueError):
                if self.config.on_malformed == "fail":
                    raise AsftError(f"{file}:{line}: {record}; fix the row (`asft screen --on-malformed reject` lists every such row and goes on)")
                out.append(self._reject(Reject(row_index, file, line, getattr(record, "code", "malformed"), str(record))))
            else:
                out.append(Row(row_index, line, record, raw, file))
        return self._mark_duplicates(out)

    def _record(self, raw: dict[str, Any]) -> Record | ValueError:
        """The row's record, or why it cannot be used (returned, not raised: a raised error's
        traceback would keep the whole chunk alive until the garbage collector runs)."""
        config = self.config
        try:
            record = to_record(raw, config.schema_, config.fields)
            if config.require_output and not record.output.strip():
                raise RowError("missing_field", f"missing or empty answer ({config.fields.output!r}, "
                               f"{config.fields.messages!r} assistant or response)")
            check_size(record, config.max_chars)
        except ValueError as exc:
            exc.__traceback__ = None
            return exc
        return record

    def _mark_duplicates(self, judged: list[Row | Reject]) -> list[Row | Reject]:
        rows = [item for item in judged if isinstance(item, Row)]
        firsts = dict(zip((r.row_index for r in rows), self._first_seen.first_rows(
            [hash(r.record) for r in rows], [r.row_index for r in rows])))
        out = []
        for item in judged:
            first = firsts.get(item.row_index, item.row_index)
            if isinstance(item, Row) and first != item.row_index:
                self._groups.setdefault(first, [first]).append(item.row_index)
                if self.config.duplicates == "drop":
                    item = self._reject(Reject(item.row_index, item.file, item.line, "duplicate", f"duplicate of row {first}"))
            out.append(item)
        return out

    def _reject(self, reject: Reject) -> Reject:
        self.reject_reasons[reject.reason] += 1
        self.examples.setdefault(reject.reason, reject)
        return reject

    def _check_totals(self) -> None:
        if not self.input_rows:
            raise AsftError(f"{self.name}: file is empty or holds no rows; give a source with at least one row")
        malformed = sum(n for reason, n in self.reject_reasons.items() if reason != "duplicate")
        if malformed > self.config.max_reject_share * self.input_rows:
            top = "; ".join(f"{reason} x{n} (e.g. {self.examples[reason].file}:{self.examples[reason].line}: "
                            f"{self.examples[reason].detail})" for reason, n in self.reject_reasons.most_common(3))
            raise AsftError(f"{self.name}: {malformed} of its {self.input_rows} rows are rejected, more than "
                            f"max_reject_share={self.config.max_reject_share:g}: {top}; check the format and schema "
                            "(--format, --schema, field mapping) or raise ingest.max_reject_share")

    @property
    def duplicate_groups(self) -> list[list[int]]:
        return list(self._groups.values())

    @property
    def files(self) -> list[dict[str, Any]]:
        return [f.as_dict() for f in self.reader.files]

    @property
    def format(self) -> str:
        return ",".join(dict.fromkeys(f.format for f in self.reader.files))

    @property
    def sha256(self) -> str:
        return self.reader.sha256


def ingest(source: Source, config: IngestConfig | None = None) -> Ingested:
    """Every row of ``source`` (a file, folder, glob, prefix, fsspec URI or ``hf://datasets/NAME``)
    as a Row or a Reject, all in memory (see ``IngestStream`` to stream instead)."""
    stream = IngestStream(source, config)
    rows: list[Row] = []
    rejects: list[Reject] = []
    for item in stream:
        (rows if isinstance(item, Row) else rejects).append(item)
    return Ingested(stream.name, stream.format, stream.input_rows, rows, rejects, stream.sha256,
                    stream.duplicate_groups, stream.files)
