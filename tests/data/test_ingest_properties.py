"""Property tests: any rows round-trip through every format; garbage never shortens a dataset
silently (accepted + quarantined + rejected == input)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asft.data.ingest import FirstSeen, IngestConfig, ingest
from asft.errors import AsftError
from asft.templates import Record

# CSV keeps text exactly except lone carriage returns, which csv line handling rewrites.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"), max_size=40)
records = st.builds(Record, instruction=text.filter(lambda s: s.strip() != ""), input=text,
                    output=text.filter(lambda s: s.strip() != ""))
garbage = st.sampled_from(["{", "[1, 2]", "null", '{"instruction": 3}', '{"output": "x"}', "not json at all", '"s"'])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write(folder: Path, fmt: str, rows: list[Record]) -> Path:
    dicts = [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in rows]
    path = folder / f"rows.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(dicts))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(d) + "\n" for d in dicts))
    elif fmt == "csv":
        pd.DataFrame(dicts).to_csv(path, index=False)
    else:
        pd.DataFrame(dicts).to_parquet(path)
    return path


@SETTINGS
@given(rows=st.lists(records, min_size=1, max_size=12), fmt=st.sampled_from(["json", "jsonl", "csv", "parquet"]))
def test_rows_round_trip(rows, fmt):
    with tempfile.TemporaryDirectory() as folder:
        result = ingest(str(_write(Path(folder), fmt, rows)))
    assert [r.record for r in result.rows] == rows
    assert [r.row_index for r in result.rows] == list(range(len(rows)))


@SETTINGS
@given(lines=st.lists(st.one_of(records, garbage), min_size=1, max_size=20), drop=st.booleans())
def test_garbage_mixed_in_counts_add_up(lines, drop):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mixed.jsonl"
        path.write_text("".join((json.dumps({"instruction": x.instruction, "input": x.input, "output": x.output})
                                 if isinstance(x, Record) else x) + "\n" for x in lines))
        result = ingest(str(path), IngestConfig(duplicates="drop" if drop else "keep", max_reject_share=1.0))
        good = [x for x in lines if isinstance(x, Record)]
        malformed = len(lines) - len(good)
        if malformed > 0.5 * len(lines):  # the default share: a mostly-garbage source fails, naming a bad line
            with pytest.raises(AsftError, match=rf"{malformed} of its {len(lines)} rows are rejected.*mixed.jsonl:\d+"):
                ingest(str(path))
        else:
            assert len(ingest(str(path)).rejects) >= malformed
    assert result.input_rows == len(lines)
    assert len(result.rows) + len(result.rejects) == len(lines)
    indices = sorted([r.row_index for r in result.rows] + [r.row_index for r in result.rejects])
    assert indices == list(range(len(lines)))
    expected_rows = len(dict.fromkeys(good)) if drop else len(good)
    assert len(result.rows) == expected_rows


@SETTINGS
@given(chunks=st.lists(st.lists(st.integers(-2**63, 2**63 - 1) | st.integers(0, 20), max_size=30), max_size=30),
       frozen=st.integers(1, 64))
def test_first_seen_agrees_with_a_dict(chunks, frozen):
    """The compact duplicate index answers as a plain dict would, whatever the run sizes."""
    index, reference, row = FirstSeen(), {}, 0
    index.FROZEN = frozen
    for hashes in chunks:
        rows = list(range(row, row + len(hashes)))
        row += len(hashes)
        expected = [reference.setdefault(h, r) for h, r in zip(hashes, rows)]
        assert index.first_rows(hashes, rows) == expected
