"""Where rows come from: a source (file, folder or prefix of shards, glob, ``s3://`` prefix,
Hugging Face ``save_to_disk`` folder, ``hf://datasets/NAME``) resolved into its ordered files,
each opened with decompression and streamed as raw rows with their file and line.

This is the one reader of row files: ``asft.data.ingest`` (forgiving: rejects with reasons)
and ``asft.rows.read_rows`` (strict: the first bad row is an error) both stream through it.
JSONL and CSV are read line by line, Parquet and Arrow by record batches; a JSON *array* is
the one format read whole (up to ``json_array_max_mb``). Every file read is recorded with its
size and sha256 (of its bytes as stored, compressed or not).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from asft import storage
from asft.data.records import RowError
from asft.errors import AsftError

Format = Literal["auto", "json", "jsonl", "csv", "parquet", "arrow"]
EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet", ".arrow": "arrow"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bz2"}
HF_PREFIX = "hf://datasets/"
BATCH_ROWS = 1024  # Parquet/Arrow rows decoded at a time
_BOM = b"\xef\xbb\xbf"
_HINT = "json, jsonl, csv, parquet, arrow (optionally .gz, .zst, .bz2)"

# One source, or several read one after the other (the new partitions of a nightly run).
Source = str | list[str]
RawRow = dict[str, Any] | ValueError  # a row, or why it cannot be one (that row's error, not the file's)


@dataclass(frozen=True)
class SourceFile:
    uri: str
    format: str
    size: int | None


@dataclass
class FileRead:
    """What was read of one file: the record a run keeps of exactly which bytes it used."""

    uri: str
    format: str
    size: int | None
    sha256: str | None = None
    rows: int = 0
    compression: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "format": self.format, "compression": self.compression, "size": self.size,
                "sha256": self.sha256, "rows": self.rows}


def parse_jsonl_line(line: str | bytes) -> dict[str, Any]:
    """One JSONL line as an object, or ValueError saying what is wrong with it."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def source_name(source: Source) -> str:
    """How messages name a source."""
    if isinstance(source, str):
        return source
    return source[0] if len(source) == 1 else f"{source[0]} (and {len(source) - 1} more file(s))"


# --- resolving a source into files -------------------------------------------------------

def split_name(name: str) -> tuple[str | None, str | None]:
    """(format, compression) a file name says, e.g. ``a.jsonl.gz`` -> (jsonl, gzip)."""
    name = name.rstrip("/").rsplit("/", 1)[-1].lower()
    compression = next((c for ext, c in COMPRESSIONS.items() if name.endswith(ext)), None)
    if compression:
        name = name.rsplit(".", 1)[0]
    return next((fmt for ext, fmt in EXTENSIONS.items() if name.endswith(ext)), None), compression


def _hidden(uri: str) -> bool:
    return uri.rstrip("/").rsplit("/", 1)[-1].startswith((".", "_"))  # .asft-output.json, _SUCCESS, .DS_Store


def _saved_dataset(source: str, found: list[tuple[str, int]], split: str) -> list[tuple[str, int]] | None:
    """The .arrow files of a ``datasets`` ``save_to_disk`` folder in their order, None if it is not one."""
    names = dict(found)
    base = {uri.rstrip("/").rsplit("/", 1)[-1]: uri for uri in names}
    if "dataset_dict.json" in base:  # a DatasetDict: one folder per split
        splits = storage.read_json(base["dataset_dict.json"]).get("splits", [])
        if split not in splits:
            raise AsftError(f"{source}: saved dataset has splits {', '.join(map(str, splits))}, not {split!r}; "
                            "choose one with --hf-split")
        folder = storage.join(source, split)
        return _saved_dataset(folder, storage.list_files(folder)[1], split)
    if "state.json" not in base or not any(n.endswith(".arrow") for n in base):
        return None
    state = storage.read_json(base["state.json"])
    files = [f.get("filename") for f in state.get("_data_files", []) if isinstance(f, dict)]
    missing = [f for f in files if f not in base]
    if not files or missing:
        raise AsftError(f"{source}: state.json of this saved dataset lists {missing[0] if missing else 'no files'} "
                        "that the folder does not hold; save the dataset again")
    return [(base[f], names[base[f]]) for f in files]


def resolve(source: Source, format: Format = "auto", split: str = "train",
            unknown_format: str | None = None) -> list[SourceFile]:
    """The files of ``source`` in reading order (names sorted; a saved dataset in its own order;
    a list of sources one after the other). A single file whose extension names no format is
    read as ``unknown_format`` if given."""
    if not isinstance(source, str):
        return [file for one in source for file in resolve(one, format, split, unknown_format)]
    kind, found = storage.list_files(source)
    if kind == "file":
        uri, size = found[0]
        fmt = format if format != "auto" else split_name(uri)[0] or unknown_format
        if fmt is None:
            raise AsftError(f"{source}: cannot tell the format from the extension; pass --format json|jsonl|csv|parquet|arrow")
        return [SourceFile(uri, fmt, size)]
    saved = _saved_dataset(source, found, split) if kind == "folder" else None
    if saved is not None:
        return [SourceFile(uri, "arrow", size) for uri, size in saved]
    files = []
    for uri, size in found:
        fmt = split_name(uri)[0] if format == "auto" else format
        if fmt is not None and not _hidden(uri):
            files.append(SourceFile(uri, fmt, size))
    if not files:
        what = {"folder": "folder", "glob": "pattern", "prefix": "prefix"}[kind]
        raise AsftError(f"{source}: the {what} holds no data files ({len(found)} other file(s)); "
                        f"give a folder, prefix or glob of {_HINT} files")
    return files


# --- opening a file ------------------------------------------------------------------------

class _HashingReader(io.RawIOBase):
    """Passes the stored bytes through, hashing them; ``drain`` hashes what was not read."""

    def __init__(self, raw: BinaryIO):
        self._raw, self.digest = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        return len(data)

    def drain(self) -> str:
        while chunk := self._raw.read(1 << 20):
            self.digest.update(chunk)
        return self.digest.hexdigest()


def _decompressed(stream: io.BufferedReader, compression: str) -> io.BufferedReader:
    import pyarrow as pa

    return io.BufferedReader(pa.CompressedInputStream(pa.PythonFile(stream, mode="r"), compression), 1 << 20)


@contextmanager
def _opened(file: SourceFile, read: FileRead) -> Iterator[io.BufferedReader]:
    """The file's decompressed bytes; on a clean exit ``read`` gets the stored bytes' sha256."""
    with storage.open_binary(file.uri) as raw:
        hashing = _HashingReader(raw)
        stream = io.BufferedReader(hashing, 1 << 20)
        named = split_name(file.uri)[1]
        read.compression = named or next((c for magic, c in MAGIC.items() if stream.peek(4).startswith(magic)), None)
        try:
            yield _decompressed(stream, read.compression) if read.compression else stream
        except OSError as exc:  # a damaged compressed stream (pyarrow says OSError), or the store failing mid-read
            what = f"cannot decompress it as {read.compression}" if read.compression else "cannot read it"
            raise AsftError(f"{file.uri}: {what} ({exc}); check the file is complete and reachable") from None
        read.sha256 = hashing.drain()


def _table_rows(file: SourceFile, read: FileRead) -> Iterator[tuple[int, RawRow]]:
    """Parquet / Arrow rows, a record batch at a time (both need a seekable, uncompressed file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split_name(file.uri)[1]:
        raise AsftError(f"{file.uri}: {file.format} files compress internally and cannot be read through "
                        f"{split_name(file.uri)[1]}; decompress the file first")
    number = 0
    with storage.open_binary(file.uri) as fh:
        try:
            if file.format == "parquet":
                batches = pq.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS)
            else:
                try:
                    batches = iter(pa.ipc.open_stream(fh))  # datasets' save_to_disk writes the stream format
                except pa.ArrowInvalid:
                    fh.seek(0)
                    reader = pa.ipc.open_file(fh)
                    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            for batch in batches:
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except (pa.ArrowException, OSError) as exc:  # pyarrow raises several types for a damaged file
            raise AsftError(f"{file.uri}: not a readable {file.format.capitalize()} file "
                            f"({type(exc).__name__}: {exc})") from None
    read.sha256 = storage.sha256_uri(file.uri)


def _json_array(name: str, stream: BinaryIO, max_mb: int) -> Iterator[tuple[int, RawRow]]:
    data = stream.read(max_mb * 2**20 + 1)
    if len(data) > max_mb * 2**20:
        raise AsftError(f"{name}: a JSON array is read whole and this one is over json_array_max_mb={max_mb}; "
                        "convert it to JSONL (one object per line, streamed) or raise ingest.json_array_max_mb")
    try:
        rows = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AsftError(f"{name}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise AsftError(f"{name}: line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
                        "the array cannot be split into rows, fix the file") from None
    for index, row in enumerate(rows, start=1):
        # a JSON array has no per-row line numbers; report the 1-based element instead
        yield index, row if isinstance(row, dict) else ValueError(
            f"element {index}: expected a JSON object, got {type(row).__name__}")


def _jsonl(stream: BinaryIO) -> Iterator[tuple[int, RawRow]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, RowError("encoding", f"not UTF-8 (byte {exc.start}); re-encode the file as UTF-8")
            continue
        try:
            yield number, parse_jsonl_line(text)
        except ValueError as exc:
            yield number, exc


def _not_utf8(row: dict[str, str]) -> bool:
    try:
        "".join(row.values()).encode("utf-8")
    except UnicodeEncodeError:  # surrogateescape kept the undecodable bytes as lone surrogates
        return True
    return False


def _csv(stream: BinaryIO) -> Iterator[tuple[int, RawRow]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.DictReader(text)
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
        elif _not_utf8(row):
            yield reader.line_num, RowError("encoding", "not UTF-8; re-encode the file as UTF-8")
        else:
            yield reader.line_num, row


def parse_stream(name: str, fmt: str, stream: io.BufferedReader, json_array_max_mb: int = 1024) -> Iterator[tuple[int, RawRow]]:
    """(line, raw row) of a decompressed byte stream; JSON files holding one object per line
    are read as JSONL (their first character tells)."""
    if stream.peek(3).startswith(_BOM):
        stream.read(3)
    if fmt == "jsonl":
        yield from _jsonl(stream)
    elif fmt == "json":
        head = stream.peek(1 << 16).lstrip()
        yield from (_json_array(name, stream, json_array_max_mb) if head.startswith(b"[") else _jsonl(stream))
    elif fmt == "csv":
        yield from _csv(stream)
    else:
        raise AsftError(f"{name}: unknown format {fmt!r}; choose json, jsonl, csv, parquet or arrow")


def _hf_rows(name: str, split: str) -> Iterator[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise AsftError(f"reading the Hugging Face dataset {name!r} needs the datasets library: "
                        "pip install 'asft[hub]' (or pip install datasets)") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
    try:
        rows = datasets.load_dataset(name, split=split, streaming=True)
        yield from rows
    except Exception as exc:  # datasets raises many types for missing/unreachable datasets
        hint = ("HF_HUB_OFFLINE=1 is set: download the dataset while online or export it to a file"
                if offline else "check the name, split and network")
        raise AsftError(f"cannot load Hugging Face dataset {name!r} split {split!r} ({type(exc).__name__}); {hint}") from None


@dataclass
class SourceReader:
    """Streams every raw row of a source as (file, line, raw row), in file order; ``files``
    records each file once it has been read to its end."""

    source: Source
    format: Format = "auto"
    split: str = "train"
    json_array_max_mb: int = 1024
    unknown_format: str | None = None
    files: list[FileRead] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[str, int, RawRow]]:
        if isinstance(self.source, str) and self.source.startswith(HF_PREFIX):
            yield from self._hub()
            return
        for file in resolve(self.source, self.format, self.split, self.unknown_format):
            read = FileRead(file.uri, file.format, file.size)
            rows = (_table_rows(file, read) if file.format in ("parquet", "arrow")
                    else self._stream_rows(file, read))
            for line, raw in rows:
                read.rows += 1
                yield file.uri, line, raw
            self.files.append(read)

    def _stream_rows(self, file: SourceFile, read: FileRead) -> Iterator[tuple[int, RawRow]]:
        with _opened(file, read) as stream:
            yield from parse_stream(file.uri, file.format, stream, self.json_array_max_mb)

    def _hub(self) -> Iterator[tuple[str, int, RawRow]]:
        """A hub dataset has no files here: its record is a hash of the rows as they were read."""
        name = self.source[len(HF_PREFIX):]
        read, digest = FileRead(self.source, "hf-dataset", None), hashlib.sha256()
        for line, row in enumerate(_hf_rows(name, self.split), start=1):
            digest.update(json.dumps(row, default=str, sort_keys=True).encode() + b"\n")
            read.rows = line
            yield self.source, line, row
        read.sha256 = digest.hexdigest()
        self.files.append(read)

    @property
    def sha256(self) -> str:
        return combined_sha256([(f.uri, f.sha256) for f in self.files])


def combined_sha256(files: list[tuple[str, str | None]]) -> str:
    """One file: its sha256; several: a hash over their names (not their folder: a moved copy
    hashes the same) and sha256s, in order."""
    if len(files) == 1:
        return files[0][1]
    return storage.sha256_json([[uri.rstrip("/").rsplit("/", 1)[-1], sha256] for uri, sha256 in files])


def source_sha256(source: str, format: Format = "auto", split: str = "train") -> str:
    """The content hash reading ``source`` records (``SourceReader.sha256``), without parsing
    it: each file's bytes streamed once (a hub dataset is read row by row)."""
    if source.startswith(HF_PREFIX):
        reader = SourceReader(source, format, split)
        for _ in reader:
            pass
        return reader.sha256
    return combined_sha256([(f.uri, storage.sha256_uri(f.uri)) for f in resolve(source, format, split, "json")])
