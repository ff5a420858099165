"""``asft screen``: ingest and screen fine-tuning data; ``asft screen fit``: fit an encoder head."""

from __future__ import annotations

from typing import List, Optional

import typer

from asft.cli.app import JSON_OPTION, app, emit, progress, validated
from asft.errors import AsftError

screen_app = typer.Typer(help="Ingest fine-tuning data and quarantine harmful rows before training.")
app.add_typer(screen_app, name="screen")


@screen_app.callback(invoke_without_command=True)
def screen(
    ctx: typer.Context,
    data: Optional[str] = typer.Option(None, "--data", help="Source: path, s3:// or other fsspec URI, hf://datasets/NAME"),
    hf_dataset: Optional[str] = typer.Option(None, "--hf-dataset", help="Hugging Face dataset name (instead of --data)"),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder or URI"),
    screener: List[str] = typer.Option(["encoder"], "--screener", help="encoder (default) | rules | classifier | guard; repeat to combine"),
    combine: str = typer.Option("any", "--combine", help="any: quarantine when one flags; all: when all flag"),
    labels: Optional[str] = typer.Option(None, "--labels", help='Ground truth: {"harmful_indices": [...]} JSON file or a boolean column name'),
    format: str = typer.Option("auto", "--format", help="auto | json | jsonl | csv | parquet"),
    schema: str = typer.Option("auto", "--schema", help="auto | alpaca | chat | prompt-response"),
    on_malformed: str = typer.Option("reject", "--on-malformed", help="reject (report and go on) | fail (stop with file:line)"),
    duplicates: str = typer.Option("keep", "--duplicates", help="keep | drop exact duplicate rows (always reported)"),
    max_chars: int = typer.Option(100_000, "--max-chars", help="Reject rows longer than this many characters"),
    allow_missing_output: bool = typer.Option(False, "--allow-missing-output", help="Accept rows without an answer (prompt sets)"),
    hf_split: str = typer.Option("train", "--hf-split", help="Split of a Hugging Face dataset"),
    screener_model: Optional[str] = typer.Option(None, "--screener-model", help="Encoder: a head folder from `asft screen fit`, or a sentence-transformers model"),
    instruction_margin: float = typer.Option(0.0, "--instruction-margin", help="Encoder zero-shot margin for instructions"),
    input_margin: float = typer.Option(0.25, "--input-margin", help="Encoder zero-shot margin for inputs"),
    classifier_model: Optional[str] = typer.Option(None, "--classifier-model", help="Moderation classifier checkpoint"),
    guard_model: Optional[str] = typer.Option(None, "--guard-model", help="Llama Guard style checkpoint"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Screen DATA into OUT: accepted.jsonl, quarantine.jsonl, rejects.jsonl, screening_report.json."""
    if ctx.invoked_subcommand is not None:
        return
    from asft.data.ingest import HF_PREFIX, FieldMap, IngestConfig
    from asft.data.pipeline import ScreenConfig, run_screen
    from asft.data.screening.encoder import EncoderConfig, is_head_folder

    if hf_dataset:
        data = HF_PREFIX + hf_dataset
    if not data or not out:
        raise AsftError("asft screen needs --data SRC (or --hf-dataset NAME) and --out DIR")
    encoder = {"instruction_margin": instruction_margin, "input_margin": input_margin,
               "device": "cpu" if device == "auto" else device}
    if screener_model:
        encoder["head" if is_head_folder(screener_model) else "model"] = screener_model
    config = validated(
        ScreenConfig, data=data, out=out, screeners=screener, combine=combine, labels=labels, device=device,
        classifier_model=classifier_model, guard_model=guard_model,
        encoder=validated(EncoderConfig, **encoder),
        ingest=validated(IngestConfig, format=format, schema=schema, fields=FieldMap(), on_malformed=on_malformed,
                          duplicates=duplicates, max_chars=max_chars, require_output=not allow_missing_output,
                          hf_split=hf_split))
    report = run_screen(config, progress=progress)
    summary = {key: report[key] for key in ("counts", "files", "timing", "reject_reasons")}
    if "quality" in report:
        summary["quality"] = report["quality"]
    emit(summary, as_json)


@screen_app.command("fit")
def fit(
    data: str = typer.Option(..., "--data", help="Labelled training rows (any format asft screen reads)"),
    labels: str = typer.Option(..., "--labels", help='{"harmful_indices": [...]} JSON file or a boolean column name'),
    out: str = typer.Option(..., "--out", help="Folder to write the head to (head.safetensors + head.json)"),
    model: Optional[str] = typer.Option(None, "--model", help="Sentence-transformers model (default: bundled all-MiniLM-L6-v2)"),
    allow_missing_output: bool = typer.Option(True, "--allow-missing-output/--require-output", help="Accept rows without an answer"),
    c: float = typer.Option(1.0, "--c", help="Inverse regularisation strength of the logistic regression"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit a logistic-regression head on encoder embeddings of labelled rows (saved as safetensors)."""
    from asft.data.ingest import IngestConfig, ingest
    from asft.data.report import load_labels
    from asft.data.screening.encoder import BUNDLED_MODEL, fit_head

    ingested = ingest(data, validated(IngestConfig, require_output=not allow_missing_output))
    truth = load_labels(labels, ingested)
    progress(f"fitting a head on {len(ingested.rows)} rows ({len(ingested.rejects)} rejected)")
    summary = fit_head([r.record for r in ingested.rows], [truth[r.row_index] for r in ingested.rows], out,
                       model=model or BUNDLED_MODEL, c=c)
    emit({**summary, "rejected": len(ingested.rejects)}, as_json)
