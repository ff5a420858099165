"""``asft screen``: stream a source, screen its rows a chunk at a time, write accepted /
quarantine / rejects as they come and a report. Every input row ends in exactly one of the
three files; the folder appears (atomically) only when the whole source has been read."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from asft import storage
from asft.data.ingest import IngestConfig, IngestStream, Reject, Row
from asft.data.records import to_row
from asft.data.review import REVIEW_FILE, Release, ReviewPage, row_id
from asft.data.report import Labels, quality_of_counts
from asft.data.screening.base import Screener, combine
from asft.data.screening.encoder import EncoderConfig
from asft.data.screening.probe import ProbeConfig
from asft.errors import AsftError

ScreenerName = Literal["encoder", "rules", "classifier", "guard", "probe"]
OUTPUT_FILES = ("accepted.jsonl", "quarantine.jsonl", "rejects.jsonl")
REPORT_FILE = "screening_report.json"


class ScreenConfig(BaseModel):
    """One screening run: where the data is, how to read it, which screeners judge it."""

    model_config = ConfigDict(extra="forbid")

    data: str | list[str] = Field(..., description="Source: a file, a folder / prefix / glob of shards, an s3:// prefix, "
                                  "a save_to_disk folder or hf://datasets/NAME (or a list of them, read in order).")
    out: str = Field(..., description="Output folder or URI for accepted/quarantine/rejects and the report.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Format, schema and malformed-row policy.")
    screeners: list[ScreenerName] = Field(["encoder"], min_length=1, description="Screeners to run (encoder is the offline default).")
    combine: Literal["any", "all", "cascade"] = Field("any", description="any: quarantine when one screener flags; all: when "
                                                      "every one does; cascade: the first (encoder) decides its sure rows, the "
                                                      "others (classifier, guard) only the band between cascade_clear_below and cascade_flag_above.")
    cascade_clear_below: float = Field(0.05, ge=0.0, le=1.0, description="Cascade: a row the encoder scores below this is accepted without the judge.")
    cascade_flag_above: float = Field(0.99, ge=0.0, le=1.0, description="Cascade: a row the encoder scores above this is quarantined without the judge.")
    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="Sentence-encoder screener settings.")
    classifier_model: str | None = Field(None, description="Moderation classifier checkpoint (for the classifier screener).")
    classifier_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Classifier: flag when any category probability exceeds this.")
    guard_model: str | None = Field(None, description="Llama Guard style checkpoint (for the guard screener).")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="The probe screener: the aligned model's refusal "
                               "direction (the pipeline reads its aligned model).")
    rules_include_output: bool = Field(False, description="Rules screener: also match the answers.")
    labels: str | None = Field(None, description="Ground truth: a {\"harmful_indices\": [...]} JSON file or a boolean column name.")
    release: str | None = Field(None, description="Rows a reviewer released from quarantine: a file of row ids (one per line, "
                                "a JSON list, or lines copied from quarantine.jsonl); they are accepted and marked released.")
    chunk_rows: int = Field(2048, ge=1, le=1_000_000, description="Rows read and screened per step (what is held in memory at once; progress granularity).")
    device: str = Field("auto", description="Device for model screeners: auto | cpu | cuda.")

    @model_validator(mode="after")
    def _screeners_are_complete(self) -> "ScreenConfig":
        """A model screener without its model, or a cascade in the wrong order, fails before any row is read."""
        for name, model, setting in (("classifier", self.classifier_model, "--classifier-model PATH"),
                                     ("guard", self.guard_model, "--guard-model PATH"), ("probe", self.probe.model, "probe.model=PATH")):
            if name in self.screeners and not model:
                raise ValueError(f"the {name} screener needs a model: {setting}")
        if self.combine != "cascade":
            return self
        names = list(dict.fromkeys(self.screeners))
        if len(names) < 2 or names[0] != "encoder" or self.encoder.mode == "zero-shot":
            raise ValueError("combine=cascade needs screeners=[encoder, then classifier, guard, probe or rules]: the encoder (tuned "
                             "or head mode: its score is a probability) first, then the judges of its uncertain band")
        if not self.cascade_clear_below < self.cascade_flag_above:
            raise ValueError(f"cascade_clear_below ({self.cascade_clear_below}) must be below cascade_flag_above "
                             f"({self.cascade_flag_above})")
        return self


def build_screener(config: ScreenConfig) -> Screener:
    screeners = []
    for name in dict.fromkeys(config.screeners):
        if name == "rules":
            from asft.data.screening.rules import RulesScreener

            screeners.append(RulesScreener(include_output=config.rules_include_output))
        elif name == "encoder":
            from asft.data.screening.encoder import encoder_screener

            screeners.append(encoder_screener(config.encoder))
        elif name == "classifier":
            from asft.data.screening.classifier import ClassifierScreener

            screeners.append(ClassifierScreener(config.classifier_model, threshold=config.classifier_threshold,
                                                device=config.device))
        elif name == "guard":
            from asft.data.screening.guard import GuardScreener

            screeners.append(GuardScreener(config.guard_model, device=config.device))
        else:
            from asft.data.screening.probe import ProbeScreener

            screeners.append(ProbeScreener(config.probe, device=config.device))
    if config.combine == "cascade":
        from asft.data.screening.cascade import Cascade

        return Cascade(screeners[0], combine(screeners[1:], "any"), config.cascade_clear_below, config.cascade_flag_above)
    return combine(screeners, config.combine)


def screener_content(config: ScreenConfig) -> list[str]:
    """Hashes of the weights and files the settings name only by path (the tuned encoder's, a
    fitted head's, the probe's model and examples), and the precision ``auto`` resolved to: a retrained screener, or another
    machine's arithmetic, must not reuse cached screening."""
    from asft.data.sources import source_sha256
    from asft.data.screening.tuned import resolve_precision, weights_digest
    from asft.io.hashing import remembered_checkpoint_sha256

    content = []
    if "probe" in config.screeners and config.probe.model:
        content += [remembered_checkpoint_sha256(storage.materialize(config.probe.model))]
        content += [source_sha256(config.probe.examples)] if config.probe.examples else []
    if "encoder" not in config.screeners:
        return content
    if config.encoder.mode == "tuned":  # bf16 flags a few rows differently from fp32: the precision in use is part of it
        return content + [weights_digest(config.encoder.tuned_model), resolve_precision(config.encoder.precision, config.encoder.device)]
    return content + ([source_sha256(config.encoder.head)] if config.encoder.mode == "head" else [])


class _Output:
    """One JSONL output written as rows come, hashed as it is written."""

    def __init__(self, path: Path):
        self.file, self.digest, self.rows = path.open("wb"), hashlib.sha256(), 0

    def write(self, rows: list[dict]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        self.file.write(data)
        self.digest.update(data)
        self.rows += len(rows)

    def close(self) -> str:
        self.file.close()
        return self.digest.hexdigest()


@dataclass
class _Tally:
    """What the report counts while the rows stream past."""

    screened: int = 0
    seconds: float = 0.0
    quarantine_reasons: Counter = field(default_factory=Counter)
    confusion: Counter = field(default_factory=Counter)  # (harmful, flagged) -> rows
    labelled_harmful_rejected: int = 0
    labelled_harmful_kept_as_refusals: int = 0
    review: ReviewPage = field(default_factory=ReviewPage)
    release: Release | None = None


def _screen_chunk(chunk: list[Row | Reject], screener: Screener, labels: Labels | None, tally: _Tally,
                  outputs: dict[str, _Output]) -> None:
    rows = [item for item in chunk if isinstance(item, Row)]
    started = time.perf_counter()
    results = screener.score([row.record for row in rows]) if rows else []
    tally.seconds += time.perf_counter() - started
    tally.screened += len(rows)
    accepted, quarantined = [], []
    for row, result in zip(rows, results, strict=True):
        fields = {**to_row(row.record), "row_index": row.row_index}
        if result.flagged:
            flagged = {**fields, "row_id": row_id(to_row(row.record)), "score": result.score, "reasons": list(result.reasons)}
            if tally.release is not None and tally.release.releases(flagged["row_id"]):
                accepted.append({**flagged, "released": True})
            else:
                quarantined.append(flagged)
                tally.review.add(flagged)
                tally.quarantine_reasons.update(reason.split(" (")[0] for reason in result.reasons)
        elif result.refused:  # kept as safety data; the reviewer sees them beside the quarantine
            refused = {**fields, "row_id": row_id(to_row(row.record)), "score": result.score,
                       "reasons": list(result.reasons), "refused": True}
            accepted.append(refused)
            tally.review.add_refusal(refused)
        else:
            accepted.append(fields)
        if labels is not None:
            tally.confusion[(labels.of(row), result.flagged)] += 1
            tally.labelled_harmful_kept_as_refusals += result.refused and labels.of(row)
    rejects = [item for item in chunk if isinstance(item, Reject)]
    if labels is not None:
        tally.labelled_harmful_rejected += sum(labels.of_rejected(r.row_index) for r in rejects)
    for name, batch in zip(OUTPUT_FILES, (accepted, quarantined, [r.as_dict() for r in rejects])):
        outputs[name].write(batch)


def run_screen(config: ScreenConfig, screener: Screener | None = None, progress=None) -> dict[str, Any]:
    """Screen ``config.data`` into ``config.out`` chunk by chunk (bounded memory whatever the
    source's size), writing the outputs as it goes; returns the report (also written as JSON)."""
    sources = config.data if isinstance(config.data, list) else [config.data]
    storage.check_output(config.out, "screening", inputs=(*sources, config.labels, config.release))
    started = time.perf_counter()
    labels = Labels(config.labels) if config.labels else None
    release = Release(config.release) if config.release else None
    stream = IngestStream(config.data, config.ingest, config.chunk_rows)
    chunks = stream.chunks()
    first = next(chunks)  # the source is opened and its first rows judged before any model loads
    screener = screener or build_screener(config)
    tally = _Tally(release=release)
    with storage.staged_dir(config.out, "screening") as folder:
        outputs = {name: _Output(Path(folder) / name) for name in OUTPUT_FILES}
        for chunk in itertools.chain([first], chunks):
            _screen_chunk(chunk, screener, labels, tally, outputs)
            if progress:
                progress(f"screened {tally.screened} rows of {stream.input_rows} read")
        digests = {name: output.close() for name, output in outputs.items()}
        if not tally.screened:  # rejecting some rows is reporting them; rejecting every row means the file is not what it seems
            first_reject = next(iter(stream.examples.values()))
            raise AsftError(f"{stream.name}: none of its {stream.input_rows} rows could be read ({first_reject.file} "
                            f"line {first_reject.line}: {first_reject.detail}); check the file's format and schema (--format, --schema)")
        if labels is not None:
            labels.check_rows(stream.input_rows)
        report = _report(config, stream, screener, tally, outputs, digests, time.perf_counter() - started)
        if labels is not None:
            report["quality"] = {**quality_of_counts(tally.confusion),
                                 "labelled_harmful_rejected": tally.labelled_harmful_rejected,
                                 "labelled_harmful_kept_as_refusals": tally.labelled_harmful_kept_as_refusals}
        (Path(folder) / REVIEW_FILE).write_text(tally.review.markdown(config.data, report.get("release")))
        (Path(folder) / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def _report(config: ScreenConfig, stream: IngestStream, screener: Screener, tally: _Tally,
            outputs: dict[str, _Output], digests: dict[str, str], total_seconds: float) -> dict[str, Any]:
    counts = {"input": stream.input_rows, "accepted": outputs["accepted.jsonl"].rows,
              "quarantined": outputs["quarantine.jsonl"].rows, "rejected": outputs["rejects.jsonl"].rows}
    assert counts["accepted"] + counts["quarantined"] + counts["rejected"] == counts["input"], counts
    groups = stream.duplicate_groups
    return {
        "source": config.data, "format": stream.format, "counts": counts,
        "reject_reasons": dict(stream.reject_reasons),
        "quarantine_reasons": dict(tally.quarantine_reasons.most_common()),
        "quarantine_categories": dict(tally.review.counts.most_common()),
        "kept_refusals": tally.review.refusals,
        **({"release": tally.release.record()} if tally.release else {}),
        "duplicates": {"groups": len(groups), "rows": sum(len(g) - 1 for g in groups),
                       "row_indices": groups, "policy": config.ingest.duplicates},
        "sha256": {"input": stream.sha256, **digests},
        "input_files": stream.files,
        "screener": screener.describe(),
        "settings": config.model_dump(mode="json", by_alias=True),
        "timing": {"seconds": round(total_seconds, 3), "screening_seconds": round(tally.seconds, 3),
                   "rows_per_second": round(tally.screened / tally.seconds, 1) if tally.seconds > 0 else None},
        "files": {name.split(".")[0]: storage.join(config.out, name) for name in (*OUTPUT_FILES, REPORT_FILE, REVIEW_FILE)},
    }
