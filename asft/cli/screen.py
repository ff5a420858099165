"""``asft screen``: ingest and screen fine-tuning data; ``asft screen tune``: tune the encoder
screener on labelled rows; ``asft screen fit``: fit a head on a frozen encoder."""

from __future__ import annotations

from typing import Optional

import typer

from asft.cli import config_args
from asft.cli.app import JSON_OPTION, app, emit, progress
from asft.errors import AsftError



# Options that name a nested field by its pre-config name (``--format`` is ingest.format).
LEGACY = {"screeners": ["--screeners", "--screener"], **{f"ingest.{k}": [f"--{k.replace('_', '-')}"] for k in (
    "format", "schema", "on_malformed", "max_reject_share", "duplicates", "max_chars", "hf_split")},
    "encoder.instruction_margin": ["--instruction-margin"], "encoder.input_margin": ["--input-margin"]}

screen_app = config_args.group(config_args.Spec("asft.data.screen:ScreenConfig", aliases=LEGACY, essentials=("data", "out", "screeners", "labels")),
                               help="Ingest fine-tuning data and quarantine harmful rows before training.")
app.add_typer(screen_app, name="screen")


@screen_app.callback(invoke_without_command=True)
def screen(
    ctx: typer.Context,
    hf_dataset: Optional[str] = typer.Option(None, "--hf-dataset", help="Hugging Face dataset name (instead of --data)"),
    screener_model: Optional[str] = typer.Option(
        None, "--screener-model", help="Encoder: a folder from `asft screen tune` (encoder.tuned_model), a head folder from "
        "`asft screen fit` (encoder.head), or a sentence-transformers model for zero-shot (encoder.model)"),
    allow_missing_output: Optional[bool] = typer.Option(
        None, "--allow-missing-output", help="Accept rows without an answer (prompt sets): ingest.require_output=false"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Screen DATA into OUT: accepted.jsonl, quarantine.jsonl, rejects.jsonl, screening_report.json.
    KEY=VALUE overrides go after the options."""
    if ctx.invoked_subcommand is not None:
        return
    from asft.data.sources import HF_PREFIX
    from asft.data.screening.encoder import is_head_folder
    from asft.data.screening.tuned import is_tuned_folder

    got = config_args.given(ctx)
    extra = {}
    if hf_dataset:
        extra["data"] = ("--hf-dataset", HF_PREFIX + hf_dataset)
    if allow_missing_output:
        extra["ingest.require_output"] = ("--allow-missing-output", False)
    if screener_model:
        field = "tuned_model" if is_tuned_folder(screener_model) else "head" if is_head_folder(screener_model) else "model"
        extra[f"encoder.{field}"] = ("--screener-model", screener_model)
    if "device" in got.options and "encoder.device" not in got.options:  # the encoder has no 'auto'
        device = got.options["device"][1]
        extra["encoder.device"] = ("--device", "cpu" if device == "auto" else device)
    if not (got.config or got.overrides or hf_dataset) and not ("data" in got.options and "out" in got.options):
        raise AsftError("asft screen needs --data SRC (or --hf-dataset NAME) and --out DIR")
    from asft.data.screen import run_screen

    report = run_screen(config_args.build(ctx, extra), progress=progress)
    summary = {key: report[key] for key in ("counts", "files", "timing", "reject_reasons")}
    if "quality" in report:
        summary["quality"] = report["quality"]
    # the threshold in use: calibrated on the user's sample, else the tuned model's own (held-out rows)
    points = [s.get("operating_point") or s["shipped_operating_point"] for s in report["screener"].get("screeners", [report["screener"]])
              if "operating_point" in s or "shipped_operating_point" in s]
    if points:
        summary["operating_point"] = points[0]
    prefilters = [s["prefilter"]["turns"] for s in report["screener"].get("screeners", [report["screener"]]) if s.get("prefilter")]
    if prefilters:  # how much of the data the transformer never had to read
        turns = prefilters[0]
        summary["prefilter"] = f"cleared {turns['cleared_by_prefilter']} of {turns['screened']} turns as plainly benign" + (
            f", and {turns['exited_early']} more after the first layers" if turns.get("exited_early") else "")
    if report["screener"].get("combine") == "cascade":
        cascade = report["screener"]
        summary["cascade"] = (f"the judge read {cascade['judged_rows']} of {cascade['rows']} rows (encoder score "
                              f"{cascade['clear_below']}-{cascade['flag_above']})")
    if report["kept_refusals"]:
        summary["kept_refusals"] = (f"accepted {report['kept_refusals']} rows whose harmful-looking request is answered with "
                                    "a refusal, as safety data (marked refused, since encoder.keep_refusals=true)")
    emit(summary, as_json)



@config_args.command(screen_app, "fit", config_args.Spec("asft.data.ingest:IngestConfig"))
def fit(
    ctx: typer.Context,
    data: str = typer.Option(..., "--data", help="Labelled training rows (any format asft screen reads)"),
    labels: str = typer.Option(..., "--labels", help='{"harmful_indices": [...]} JSON file or a boolean column name'),
    out: str = typer.Option(..., "--out", help="Folder to write the head to (head.safetensors + head.json)"),
    model: Optional[str] = typer.Option(None, "--model", help="Sentence-transformers model (default: bundled all-MiniLM-L6-v2)"),
    allow_missing_output: bool = typer.Option(True, "--allow-missing-output/--require-output", help="Accept rows without an answer"),
    c: float = typer.Option(1.0, "--c", help="Inverse regularisation strength of the logistic regression"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit a logistic-regression head on encoder embeddings of labelled rows (saved as safetensors).
    Options and KEY=VALUE set how the rows are read (IngestConfig)."""
    from asft.data.ingest import ingest
    from asft.data.report import load_labels
    from asft.data.screening.encoder import BUNDLED_MODEL, fit_head

    config = config_args.build(ctx, {"require_output": ("--allow-missing-output", not allow_missing_output)})
    ingested = ingest(data, config)
    truth = load_labels(labels, ingested)
    progress(f"fitting a head on {len(ingested.rows)} rows ({len(ingested.rejects)} rejected)")
    summary = fit_head([r.record for r in ingested.rows], [truth[r.row_index] for r in ingested.rows], out,
                       model=model or BUNDLED_MODEL, c=c)
    emit({**summary, "rejected": len(ingested.rejects)}, as_json)


@screen_app.command("tune")
def tune(
    data: Optional[str] = typer.Option(None, "--data", help="Labelled requests (any format asft screen reads); "
                                       "default: the set the shipped screener was tuned on (head_data)"),
    labels: Optional[str] = typer.Option(None, "--labels", help='With --data: {"harmful_indices": [...]} JSON file or a boolean column name'),
    out: str = typer.Option(..., "--out", help="Folder to write the screener to (tuned.safetensors, prefilter.safetensors, tuned.json)"),
    epochs: int = typer.Option(3, "--epochs", min=1, max=50, help="Passes over the training rows per seed"),
    soup: int = typer.Option(3, "--soup", min=1, max=10, help="Seeds whose weights are averaged"),
    seed: int = typer.Option(0, "--seed", help="First seed; it also draws the held-out rows"),
    layers: int = typer.Option(6, "--layers", min=1, max=6, help="How many of MiniLM's six layers to keep: 3 tunes in half the "
                               "time and screens 1.4-1.7x as fast, with a lower recall (RESULTS.md); the early exit after layer 4 needs 5 or 6"),
    target_fpr: float = typer.Option(0.03, "--target-fpr", min=0.001, max=0.5, help="Share of held-out benign rows the threshold flags"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune all-MiniLM-L6-v2 as the encoder screener (about 20 min on two CPU cores for the
    shipped set); use it with --screener-model OUT. A fifth of the rows sets the threshold."""
    from asft.data.screening.tuned import TuneSettings, shipped_training_set
    from asft.data.screening.tuned import tune as tune_screener

    if (data is None) != (labels is None):
        raise AsftError("asft screen tune: give --data and --labels together (or neither, for the shipped training set)")
    if data is None:
        records, truth, kinds = shipped_training_set()
    else:
        from asft.data.ingest import IngestConfig, ingest
        from asft.data.report import load_labels

        ingested = ingest(data, IngestConfig(require_output=False))
        found = load_labels(labels, ingested)
        records, truth, kinds = [r.record for r in ingested.rows], [found[r.row_index] for r in ingested.rows], None
        if ingested.rejects:
            progress(f"{data}: {len(ingested.rejects)} rows could not be read and are not used")
    progress(f"tuning a screener on {len(records)} rows ({int(sum(truth))} harmful)")
    settings = TuneSettings(layers=layers, epochs=epochs, soup=soup, seed=seed, target_fpr=target_fpr)
    summary = tune_screener(records, truth, out, settings, progress=progress, kinds=kinds)
    emit({"out": out, **{k: summary[k] for k in ("rows", "harmful_rows", "threshold", "operating_point")}}, as_json)
