"""``asft screen`` end to end: every row in exactly one output, reports, labels, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from asft.data.mixtures import build_mixture, write_mixture
from asft.data.screen import ScreenConfig, run_screen
from asft.templates import Record
from data_helpers import BENIGN, HARMFUL, write_jsonl


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_screen_accounts_for_every_row(tmp_path):
    lines = [BENIGN[0], HARMFUL[0], "{broken", BENIGN[1], BENIGN[0], HARMFUL[1], {"instruction": "x"}]
    data = write_jsonl(tmp_path / "data.jsonl", lines)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"harmful_indices": [1, 5]}))
    out = tmp_path / "out"
    config = ScreenConfig(data=str(data), out=str(out), screeners=["rules"], labels=str(labels),
                          ingest={"duplicates": "drop"})
    report = run_screen(config)
    assert report["counts"] == {"input": 7, "accepted": 2, "quarantined": 2, "rejected": 3}
    accepted, quarantine, rejects = (_read_jsonl(out / n) for n in ("accepted.jsonl", "quarantine.jsonl", "rejects.jsonl"))
    assert [r["row_index"] for r in accepted] == [0, 3] and set(accepted[0]) == {"instruction", "input", "output", "row_index"}
    assert [r["row_index"] for r in quarantine] == [1, 5] and all(r["reasons"] and r["score"] > 0 for r in quarantine)
    assert [(r["row_index"], r["line"], r["reason"]) for r in rejects] == [(2, 3, "malformed"), (4, 5, "duplicate"), (6, 7, "missing_field")]
    assert report["reject_reasons"] == {"malformed": 1, "duplicate": 1, "missing_field": 1}
    assert report["quality"]["recall"] == 1.0 and report["quality"]["false_positive_rate"] == 0.0
    assert report["quality"]["confusion_matrix"] == {"true_positive": 2, "false_positive": 0, "false_negative": 0, "true_negative": 2}
    from asft.storage import sha256_file
    assert report["sha256"]["input"] == sha256_file(data)
    assert report["sha256"]["accepted.jsonl"] == sha256_file(out / "accepted.jsonl")
    assert json.loads((out / "screening_report.json").read_text())["counts"] == report["counts"]


def test_labels_from_a_boolean_column(tmp_path):
    rows = [{**BENIGN[0], "harmful": False}, {**HARMFUL[0], "harmful": True}, {**BENIGN[2], "harmful": "false"}]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    report = run_screen(ScreenConfig(data=str(data), out=str(tmp_path / "out"), screeners=["rules"], labels="harmful"))
    assert report["quality"]["confusion_matrix"]["true_positive"] == 1 and report["quality"]["precision"] == 1.0


def test_mixture_has_ratio_labels_and_seed(tmp_path):
    benign = [Record(f"benign {i}", "", "ok") for i in range(50)]
    harmful = [Record(f"harmful {i}", "", "sure") for i in range(10)]
    rows, idx = build_mixture(benign, harmful, n=40, p=0.1, seed=3)
    assert len(rows) == 40 and len(idx) == 4 and all(rows[i].instruction.startswith("harmful") for i in idx)
    assert build_mixture(benign, harmful, n=40, p=0.1, seed=3) == (rows, idx)
    assert build_mixture(benign, harmful, n=40, p=0.1, seed=4) != (rows, idx)
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": r.instruction, "output": r.output} for r in benign])
    h = write_jsonl(tmp_path / "h.jsonl", [{"instruction": r.instruction, "output": r.output} for r in harmful])
    written = write_mixture(str(b), str(h), str(tmp_path / "mix.jsonl"), n=20, p=0.25, seed=0)
    labels = json.loads((tmp_path / "mix.harmful.json").read_text())
    assert labels == {"file": "mix.jsonl", "rows": 20, "harmful_indices": written["harmful_indices"]}
    assert len(labels["harmful_indices"]) == 5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "asft", *args], capture_output=True, text=True, timeout=600)


def test_cli_screen_and_fail_policy(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [BENIGN[0], HARMFUL[0], "{broken"])
    done = _cli("screen", "--data", str(data), "--out", str(tmp_path / "out"), "--screener", "rules", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["counts"] == {"input": 3, "accepted": 1, "quarantined": 1, "rejected": 1}
    assert summary["files"]["accepted"].endswith("accepted.jsonl") and "rows_per_second" in summary["timing"]
    failed = _cli("screen", "--data", str(data), "--out", str(tmp_path / "out2"), "--screener", "rules", "--on-malformed", "fail")
    assert failed.returncode == 2 and f"{data}:3: invalid JSON" in failed.stderr and "Traceback" not in failed.stderr
    missing = _cli("screen", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o3"), "--screener", "rules")
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_screen_streams_shards_in_small_chunks_and_records_its_input_files(tmp_path):
    import gzip

    from asft.storage import sha256_file

    folder = tmp_path / "shards"
    folder.mkdir()
    rows = [BENIGN[i % len(BENIGN)] | {"instruction": f"{BENIGN[i % len(BENIGN)]['instruction']} #{i}"} for i in range(40)]
    rows[7], rows[31] = HARMFUL[0], HARMFUL[1]
    write_jsonl(folder / "part-0.jsonl", rows[:20])
    (folder / "part-1.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows[20:]).encode()))
    out = tmp_path / "out"
    report = run_screen(ScreenConfig(data=str(folder), out=str(out), screeners=["rules"], chunk_rows=3))
    assert report["counts"] == {"input": 40, "accepted": 38, "quarantined": 2, "rejected": 0}
    assert [r["row_index"] for r in _read_jsonl(out / "quarantine.jsonl")] == [7, 31]
    assert [r["row_index"] for r in _read_jsonl(out / "accepted.jsonl")] == [i for i in range(40) if i not in (7, 31)]
    assert [(f["uri"], f["rows"], f["sha256"]) for f in report["input_files"]] == [
        (str(p), 20, sha256_file(p)) for p in (folder / "part-0.jsonl", folder / "part-1.jsonl.gz")]
    assert report["sha256"]["quarantine.jsonl"] == sha256_file(out / "quarantine.jsonl")


def test_mostly_rejected_source_fails_after_counting_every_row(tmp_path):
    lines = [BENIGN[0], {"question": "a"}, {"question": "b"}, "{broken", BENIGN[1], {"question": "c"}]
    data = write_jsonl(tmp_path / "data.jsonl", lines)
    failed = _cli("screen", "--data", str(data), "--out", str(tmp_path / "out"), "--screener", "rules")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "4 of its 6 rows are rejected, more than max_reject_share=0.5" in failed.stderr
    assert f"missing_field x3 (e.g. {data}:2:" in failed.stderr and f"malformed x1 (e.g. {data}:4:" in failed.stderr
    assert not (tmp_path / "out").exists()
    allowed = _cli("screen", "--data", str(data), "--out", str(tmp_path / "out"), "--screener", "rules",
                   "--max-reject-share", "0.7", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["counts"] == {"input": 6, "accepted": 2, "quarantined": 0, "rejected": 4}
