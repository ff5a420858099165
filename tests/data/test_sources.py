"""The one reader: sources (folders, globs, prefixes, s3, saved datasets), compression, file
records, and the strict ``read_rows`` and forgiving ``ingest`` reading the same rows."""

from __future__ import annotations

import bz2
import gzip
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from data_helpers import BENIGN, HARMFUL, write_jsonl

from asft import storage
from asft.data.ingest import IngestConfig, IngestStream, ingest
from asft.data.sources import resolve, source_sha256
from asft.errors import AsftError
from asft.rows import read_rows
from asft.templates import Record

ROWS = [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in BENIGN + HARMFUL]


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _zstd(data: bytes) -> bytes:
    return pa.Codec("zstd").compress(data, asbytes=True)


def _shards(folder, n: int = 3) -> list[list[dict]]:
    """ROWS split over ``n`` shards of three formats, named like a hub dataset's."""
    folder.mkdir(exist_ok=True)
    parts = [ROWS[i::n] for i in range(n)]
    writers = [lambda p, r: write_jsonl(p.with_suffix(".jsonl"), r),
               lambda p, r: pd.DataFrame(r).to_parquet(p.with_suffix(".parquet")),
               lambda p, r: p.with_suffix(".jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(r)))]
    for i, part in enumerate(parts):
        writers[i % 3](folder / f"train-{i:05d}-of-{n:05d}", part)
    return parts


def test_a_folder_of_shards_reads_every_file_in_name_order_and_records_each(tmp_path):
    parts = _shards(tmp_path / "data")
    (tmp_path / "data" / "README.md").write_text("not data")
    (tmp_path / "data" / "_SUCCESS").write_text("")
    result = ingest(str(tmp_path / "data"))
    assert [r.record for r in result.rows] == [Record(**r) for part in parts for r in part]
    assert [r.row_index for r in result.rows] == list(range(len(ROWS)))
    assert [(f["format"], f["compression"], f["rows"]) for f in result.files] == [
        ("jsonl", None, len(parts[0])), ("parquet", None, len(parts[1])), ("jsonl", "gzip", len(parts[2]))]
    for f in result.files:
        assert f["sha256"] == storage.sha256_file(f["uri"]) and f["size"] == Path(f["uri"]).stat().st_size
    assert result.sha256 == storage.sha256_json([[Path(f["uri"]).name, f["sha256"]] for f in result.files])
    assert source_sha256(str(tmp_path / "data")) == result.sha256  # without parsing: the pipeline's cache key
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    assert source_sha256(str(tmp_path / "moved")) == result.sha256  # content, not location
    assert result.rows[-1].file == result.files[-1]["uri"] and result.format == "jsonl,parquet"


def test_globs_and_prefixes_pick_their_files(tmp_path):
    _shards(tmp_path / "data", n=6)
    assert [f.uri.rsplit("/", 1)[-1] for f in resolve(str(tmp_path / "data" / "*.parquet"))] == [
        "train-00001-of-00006.parquet", "train-00004-of-00006.parquet"]
    assert len(resolve(str(tmp_path / "data" / "train-0000"))) == 6  # a prefix: every file it begins
    assert len(ingest(str(tmp_path / "data" / "*.jsonl*")).rows) == 4


@pytest.mark.parametrize("make", ["empty_folder", "no_data_files", "glob", "prefix"])
def test_a_source_without_files_is_one_error_naming_it(tmp_path, make):
    folder = tmp_path / "data"
    folder.mkdir()
    source = {"empty_folder": folder, "no_data_files": folder, "glob": folder / "*.parquet",
              "prefix": tmp_path / "nothing-"}[make]
    if make == "no_data_files":
        (folder / "notes.txt").write_text("x")
    with pytest.raises(AsftError, match=rf"^{re.escape(str(source))}: .*(no files|no data files|no such file)"):
        ingest(str(source))


@pytest.mark.parametrize("compression", ["gzip", "zstd", "bz2"])
def test_compressed_files_by_extension_and_by_magic_bytes(tmp_path, compression):
    data = _jsonl_bytes(ROWS)
    packed = {"gzip": gzip.compress, "zstd": _zstd, "bz2": bz2.compress}[compression](data)
    ext = {"gzip": ".gz", "zstd": ".zst", "bz2": ".bz2"}[compression]
    named = tmp_path / f"rows.jsonl{ext}"
    named.write_bytes(packed)
    result = ingest(str(named))
    assert [r.record for r in result.rows] == [Record(**r) for r in ROWS] and not result.rejects
    assert result.sha256 == storage.sha256_bytes(packed) and result.files[0]["compression"] == compression
    unnamed = tmp_path / "rows.data"
    unnamed.write_bytes(packed)
    assert len(ingest(str(unnamed), IngestConfig(format="jsonl")).rows) == len(ROWS)
    assert read_rows(str(named), required=("instruction",)) == ROWS


def test_a_damaged_compressed_file_is_one_error(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl_bytes(ROWS * 50))[:200])
    with pytest.raises(AsftError, match="rows.jsonl.gz: cannot decompress it as gzip"):
        ingest(str(path))


def _save_to_disk(folder, splits: dict[str, list[list[dict]]]) -> None:
    """The layout ``datasets`` ``save_to_disk`` writes: Arrow stream files, state.json, dataset_info.json."""
    for split, shards in splits.items():
        target = folder / split if len(splits) > 1 else folder
        target.mkdir(parents=True)
        names = []
        for i, rows in enumerate(shards):
            names.append(f"data-{i:05d}-of-{len(shards):05d}.arrow")
            table = pa.Table.from_pylist(rows)
            with pa.ipc.new_stream(str(target / names[-1]), table.schema) as writer:
                writer.write_table(table, max_chunksize=2)
        (target / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names],
                                                       "_split": split, "_fingerprint": "0"}))
        (target / "dataset_info.json").write_text(json.dumps({"features": {}}))
    if len(splits) > 1:
        (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))


def test_saved_datasets_read_with_pyarrow_alone(tmp_path):
    _save_to_disk(tmp_path / "one", {"train": [ROWS[3:], ROWS[:3]]})  # state.json's order, not the names'
    assert [r.record for r in ingest(str(tmp_path / "one")).rows] == [Record(**r) for r in ROWS[3:] + ROWS[:3]]
    _save_to_disk(tmp_path / "dict", {"train": [ROWS[:4]], "test": [ROWS[4:]]})
    test = ingest(str(tmp_path / "dict"), IngestConfig(hf_split="test"))
    assert [r.record for r in test.rows] == [Record(**r) for r in ROWS[4:]] and test.format == "arrow"
    with pytest.raises(AsftError, match="splits train, test, not 'validation'"):
        ingest(str(tmp_path / "dict"), IngestConfig(hf_split="validation"))


def test_s3_prefix_reads_its_shards(s3_endpoint, tmp_path):
    parts = _shards(tmp_path / "data")
    for path in sorted((tmp_path / "data").iterdir()):
        storage.write_bytes(f"s3://asft/shards/{path.name}", path.read_bytes())
    result = ingest("s3://asft/shards/")
    assert [r.record for r in result.rows] == [Record(**r) for part in parts for r in part]
    assert [f["uri"] for f in result.files] == [f"s3://asft/shards/{p.name}" for p in sorted((tmp_path / "data").iterdir())]
    assert [f["sha256"] for f in result.files] == [storage.sha256_file(p) for p in sorted((tmp_path / "data").iterdir())]
    assert len(read_rows("s3://asft/shards/train-00001-of-00003.parquet", required=("output",))) == len(parts[1])


def test_read_rows_is_strict_over_the_same_sources(tmp_path):
    pd.DataFrame(ROWS).to_csv(tmp_path / "rows.csv", index=False)
    assert read_rows(str(tmp_path / "rows.csv"), required=("instruction", "output")) == ROWS
    (tmp_path / "rows.txt").write_text(json.dumps(ROWS))  # no known extension: JSON (array or lines)
    assert read_rows(str(tmp_path / "rows.txt")) == ROWS
    _shards(tmp_path / "shards")
    assert len(read_rows(str(tmp_path / "shards"))) == len(ROWS)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(_jsonl_bytes(ROWS[:2]) + b'{"instruction": 1}\n'))
    with pytest.raises(AsftError, match=rf"{re.escape(str(bad))}: line 3: missing text field\(s\) instruction"):
        read_rows(str(bad), required=("instruction",))


def test_a_json_array_over_the_limit_says_to_use_jsonl(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(ROWS * 15_000))  # about 2 MB
    with pytest.raises(AsftError, match="JSON array is read whole.*json_array_max_mb=1.*JSONL"):
        ingest(str(path), IngestConfig(json_array_max_mb=1))
    jsonl_in_json = tmp_path / "lines.json"  # hub datasets often name JSONL files .json
    jsonl_in_json.write_bytes(_jsonl_bytes(ROWS))
    assert len(ingest(str(jsonl_in_json)).rows) == len(ROWS)


def test_csv_rows_that_are_not_utf8_are_rejected_one_by_one(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"instruction,output\nfine,yes\n" + "caf\xe9,no\n".encode("latin-1") + b"also fine,yes\n")
    result = ingest(str(path))
    assert [r.record.instruction for r in result.rows] == ["fine", "also fine"]
    assert [(r.line, r.reason) for r in result.rejects] == [(3, "encoding")]


def test_streaming_holds_one_chunk_and_finds_duplicates_across_chunks(tmp_path):
    lines = [ROWS[i % 3] if i % 10 == 0 else {"instruction": f"row {i}", "output": "x"} for i in range(500)]
    path = write_jsonl(tmp_path / "rows.jsonl", lines)
    stream = IngestStream(str(path), IngestConfig(duplicates="drop"), chunk_rows=16)
    sizes, kept = [], []
    for chunk in stream.chunks():
        sizes.append(len(chunk))
        kept += [item.row_index for item in chunk if not hasattr(item, "reason")]
    assert max(sizes) == 16 and sum(sizes) == 500 and stream.input_rows == 500
    repeated = [i for i in range(500) if i % 10 == 0]
    assert stream.duplicate_groups == [[i for i in repeated if i % 3 == k] for k in (0, 1, 2)]  # ROWS[i % 3]
    assert kept == [i for i in range(500) if i % 10 or i < 30]
    assert stream.reject_reasons == {"duplicate": 500 - len(kept)}
