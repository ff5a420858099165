"""``asft screen``: ingest a source, screen its rows, write accepted / quarantine / rejects
and a report. Every input row ends in exactly one of the three files."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from asft import storage
from asft.data.ingest import IngestConfig, ingest
from asft.data.report import load_labels, quality
from asft.data.screening.base import Screener, combine
from asft.data.screening.encoder import EncoderConfig
from asft.errors import AsftError

ScreenerName = Literal["encoder", "rules", "classifier", "guard"]
OUTPUT_FILES = ("accepted.jsonl", "quarantine.jsonl", "rejects.jsonl")
REPORT_FILE = "screening_report.json"


class ScreenConfig(BaseModel):
    """One screening run: where the data is, how to read it, which screeners judge it."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(..., description="Source: path, fsspec URI (s3://...) or hf://datasets/NAME.")
    out: str = Field(..., description="Output folder or URI for accepted/quarantine/rejects and the report.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Format, schema and malformed-row policy.")
    screeners: list[ScreenerName] = Field(["encoder"], min_length=1, description="Screeners to run (encoder is the offline default).")
    combine: Literal["any", "all"] = Field("any", description="any: quarantine when one screener flags; all: when every one does.")
    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="Sentence-encoder screener settings.")
    classifier_model: str | None = Field(None, description="Moderation classifier checkpoint (for the classifier screener).")
    classifier_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Classifier: flag when any category probability exceeds this.")
    guard_model: str | None = Field(None, description="Llama Guard style checkpoint (for the guard screener).")
    rules_include_output: bool = Field(False, description="Rules screener: also match the answers.")
    labels: str | None = Field(None, description="Ground truth: a {\"harmful_indices\": [...]} JSON file or a boolean column name.")
    chunk_rows: int = Field(2048, ge=1, le=1_000_000, description="Rows screened per step (progress granularity).")
    device: str = Field("auto", description="Device for model screeners: auto | cpu | cuda.")


def build_screener(config: ScreenConfig) -> Screener:
    screeners = []
    for name in dict.fromkeys(config.screeners):
        if name == "rules":
            from asft.data.screening.rules import RulesScreener

            screeners.append(RulesScreener(include_output=config.rules_include_output))
        elif name == "encoder":
            from asft.data.screening.encoder import EncoderScreener

            screeners.append(EncoderScreener(config.encoder))
        elif name == "classifier":
            from asft.data.screening.classifier import ClassifierScreener

            if not config.classifier_model:
                raise AsftError("the classifier screener needs a model: --classifier-model PATH")
            screeners.append(ClassifierScreener(config.classifier_model, threshold=config.classifier_threshold,
                                                device=config.device))
        else:
            from asft.data.screening.guard import GuardScreener

            if not config.guard_model:
                raise AsftError("the guard screener needs a model: --guard-model PATH")
            screeners.append(GuardScreener(config.guard_model, device=config.device))
    return combine(screeners, config.combine)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def run_screen(config: ScreenConfig, screener: Screener | None = None, progress=None) -> dict[str, Any]:
    """Screen ``config.data`` into ``config.out``; returns the report (also written as JSON)."""
    storage.check_output(config.out, "screening", inputs=(config.data, config.labels))
    started = time.perf_counter()
    data = ingest(config.data, config.ingest)
    if not data.rows:  # rejecting some rows is reporting them; rejecting every row means the file is not what it seems
        first = data.rejects[0]
        raise AsftError(f"{config.data}: none of its {data.input_rows} rows could be read (line {first.line}: "
                        f"{first.detail}); check the file's format and schema (--format, --schema)")
    labels = load_labels(config.labels, data) if config.labels else None
    screener = screener or build_screener(config)

    screen_start = time.perf_counter()
    results = []
    for start in range(0, len(data.rows), config.chunk_rows):
        results.extend(screener.score([row.record for row in data.rows[start:start + config.chunk_rows]]))
        if progress:
            progress(f"screened {len(results)}/{len(data.rows)} rows")
    screen_seconds = time.perf_counter() - screen_start

    accepted, quarantined = [], []
    for row, result in zip(data.rows, results, strict=True):
        fields = {"instruction": row.record.instruction, "input": row.record.input, "output": row.record.output,
                  "row_index": row.row_index}
        if result.flagged:
            quarantined.append({**fields, "score": result.score, "reasons": list(result.reasons)})
        else:
            accepted.append(fields)
    rejects = sorted((r.as_dict() for r in data.rejects), key=lambda r: r["row_index"])
    counts = {"input": data.input_rows, "accepted": len(accepted), "quarantined": len(quarantined), "rejected": len(rejects)}
    assert counts["accepted"] + counts["quarantined"] + counts["rejected"] == counts["input"], counts

    reason_counts = Counter(reason.split(" (")[0] for q in quarantined for reason in q["reasons"])
    payloads = dict(zip(OUTPUT_FILES, (_jsonl(accepted), _jsonl(quarantined), _jsonl(rejects))))
    total_seconds = time.perf_counter() - started
    report: dict[str, Any] = {
        "source": config.data, "format": data.format, "counts": counts,
        "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
        "quarantine_reasons": dict(reason_counts.most_common()),
        "duplicates": {"groups": len(data.duplicate_groups),
                       "rows": sum(len(g) - 1 for g in data.duplicate_groups),
                       "row_indices": data.duplicate_groups, "policy": config.ingest.duplicates},
        "sha256": {"input": data.sha256, **{name: storage.sha256_bytes(b) for name, b in payloads.items()}},
        "screener": screener.describe(),
        "settings": config.model_dump(mode="json", by_alias=True),
        "timing": {"seconds": round(total_seconds, 3), "screening_seconds": round(screen_seconds, 3),
                   "rows_per_second": round(len(data.rows) / screen_seconds, 1) if screen_seconds > 0 else None},
        "files": {name.split(".")[0]: storage.join(config.out, name) for name in (*OUTPUT_FILES, REPORT_FILE)},
    }
    if labels is not None:
        screened = [(labels[row.row_index], r.flagged) for row, r in zip(data.rows, results)]
        report["quality"] = quality([t for t, _ in screened], [f for _, f in screened])
        report["quality"]["labelled_harmful_rejected"] = sum(labels.get(r["row_index"], False) for r in rejects)
    with storage.staged_dir(config.out, "screening") as folder:
        for name, payload in payloads.items():
            (Path(folder) / name).write_bytes(payload)
        (Path(folder) / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
