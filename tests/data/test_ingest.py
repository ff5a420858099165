"""Ingestion: formats, schemas, field mapping, and every kind of bad input accounted for."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from data_helpers import BENIGN, write_jsonl

from asft.data.ingest import IngestConfig, ingest
from asft.data.records import FieldMap, to_record
from asft.errors import AsftError
from asft.templates import Record


def _records(result):
    return [r.record for r in result.rows]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_each_format_reads_the_same_records(tmp_path, fmt):
    rows = [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in BENIGN]
    path = tmp_path / f"data.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        write_jsonl(path, rows)
    else:
        frame = pd.DataFrame(rows)
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    result = ingest(str(path))
    assert _records(result) == [Record(**r) for r in rows]
    assert [r.row_index for r in result.rows] == list(range(len(rows)))
    assert result.format == fmt and result.input_rows == len(rows) and not result.rejects


def test_format_override_and_unknown_extension(tmp_path):
    path = write_jsonl(tmp_path / "data.txt", BENIGN)
    with pytest.raises(AsftError, match="--format"):
        ingest(str(path))
    assert len(ingest(str(path), IngestConfig(format="jsonl")).rows) == len(BENIGN)


def test_schemas_and_field_mapping():
    # chat and ShareGPT rows: tests/data/test_chat.py (records.py's own tests)
    assert to_record({"prompt": "2+2?", "completion": "4"}) == Record("2+2?", "", "4")
    assert to_record({"prompt": "2+2?", "response": "4"}) == Record("2+2?", "", "4")
    mapped = FieldMap(instruction="question", output="answer")
    assert to_record({"question": "Why?", "answer": "Because."}, "alpaca", mapped) == Record("Why?", "", "Because.")


def test_malformed_rows_are_rejected_with_line_and_reason(tmp_path):
    lines = [BENIGN[0], "{not json", '"a string"', {"instruction": "no answer"}, {"output": "no instruction"},
             {"instruction": 5, "output": "x"}, {"instruction": "x" * 100, "output": "long"}, BENIGN[1]]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    result = ingest(str(path), IngestConfig(max_chars=80, max_reject_share=1.0))
    assert result.input_rows == 8 and len(result.rows) == 2
    assert [(r.row_index, r.line, r.reason) for r in result.rejects] == [
        (1, 2, "malformed"), (2, 3, "malformed"), (3, 4, "missing_field"), (4, 5, "missing_field"),
        (5, 6, "malformed"), (6, 7, "too_long")]
    assert all(r.file == str(path) for r in result.rejects)
    assert "invalid JSON" in result.rejects[0].detail and "max_chars 80" in result.rejects[-1].detail


def test_fail_policy_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [BENIGN[0], BENIGN[1], "{oops"])
    with pytest.raises(AsftError, match=rf"{path}:3: invalid JSON"):
        ingest(str(path), IngestConfig(on_malformed="fail"))


def test_bad_encoding_line_is_rejected_and_whole_file_json_is_an_error(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(BENIGN[0]).encode() + b"\n" + '{"instruction": "caf\xe9", "output": "x"}'.encode("latin-1") + b"\n")
    result = ingest(str(path))
    assert len(result.rows) == 1 and result.rejects[0].reason == "encoding" and result.rejects[0].line == 2
    latin_json = tmp_path / "latin.json"
    latin_json.write_bytes('[{"instruction": "caf\xe9", "output": "x"}]'.encode("latin-1"))
    with pytest.raises(AsftError, match="not UTF-8"):
        ingest(str(latin_json))


@pytest.mark.parametrize("content", ["", "  \n", "[]"])
def test_empty_inputs_are_errors(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_text(content)
    with pytest.raises(AsftError, match="empty|no rows"):
        ingest(str(path))


def test_broken_json_array_is_an_error_with_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": \n]')
    with pytest.raises(AsftError, match="line 4"):
        ingest(str(path))


def test_duplicates_reported_and_dropped_as_rejects(tmp_path):
    path = write_jsonl(tmp_path / "dups.jsonl", [BENIGN[0], BENIGN[1], BENIGN[0], BENIGN[0]])
    kept = ingest(str(path))
    assert kept.duplicate_groups == [[0, 2, 3]] and len(kept.rows) == 4
    dropped = ingest(str(path), IngestConfig(duplicates="drop"))
    assert [r.row_index for r in dropped.rows] == [0, 1]
    assert [(r.row_index, r.reason) for r in dropped.rejects] == [(2, "duplicate"), (3, "duplicate")]


def test_missing_file_unreachable_uri_and_hf_without_datasets(tmp_path, monkeypatch):
    with pytest.raises(AsftError, match="no such file"):
        ingest(str(tmp_path / "absent.jsonl"))
    monkeypatch.setenv("ASFT_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(AsftError, match="cannot read s3://"):
        ingest("s3://no-bucket/data.jsonl")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(AsftError, match="pip install datasets"):
            ingest("hf://datasets/tatsu-lab/alpaca")
    else:  # tests run offline (HF_HUB_OFFLINE=1)
        with pytest.raises(AsftError, match="HF_HUB_OFFLINE"):
            ingest("hf://datasets/surely-not/a-dataset")
