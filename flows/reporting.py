"""What a person looking at a pipeline run sees: Prefect artifacts and the MLflow record."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from asft import registry, storage
from asft.decision_report import decision_markdown, flipped_prompts
from asft.gates import EvalSummary, GateDecision, eval_summary
from asft.plots import decision_figure, eval_comparison, png_bytes, save_png, training_curves


def _metrics(direction: dict, screening: dict, training: dict, before: dict, after: dict,
             inspection: dict | None) -> dict:
    metrics = {
        "direction.seconds": direction["seconds"],
        **{f"screening.{k}": v for k, v in screening["counts"].items() if isinstance(v, (int, float))},
        "train.final_loss": training.get("final_loss"),
        "train.final_penalty": training.get("final_penalty"),
        "train.wall_seconds": training.get("wall_seconds"),
        "train.tokens_per_second": training.get("tokens_per_second"),
    }
    for name, report in (("before", before), ("after", after)):
        metrics[f"{name}.harmful_score"] = report["harmful_score"]
        metrics[f"{name}.harmful_score_ci95_low"], metrics[f"{name}.harmful_score_ci95_high"] = report["harmful_score_ci95"]
        metrics[f"{name}.over_refusal"] = report.get("over_refusal")
        metrics.update({f"{name}.utility.{task}": value for task, value in report["utility"].items()})
    if inspection:
        metrics.update({f"update.{k}": v for k, v in inspection.items() if isinstance(v, (int, float))})
    return {k: v for k, v in metrics.items() if v is not None}


def log_run(run_id: str, run, *, data: dict, direction: dict, screening: dict, training: dict, before: dict, after: dict,
            inspection: dict | None) -> None:
    """Metrics, curves, artefacts and plots of one pipeline run into its MLflow run; ``data``:
    the files it trained on and its lineage's (``data/files.json``, read by the next run)."""
    uri, adapter = run.tracking_uri, training["adapter"]
    registry.log_metrics(run_id, _metrics(direction, screening, training, before, after, inspection), tracking_uri=uri)
    rows = [json.loads(line) for line in storage.read_text(storage.join(adapter, "metrics.jsonl")).splitlines() if line]
    registry.log_metric_series(run_id, "train.loss", [r["loss"] for r in rows], tracking_uri=uri)
    if rows and rows[0].get("penalty") is not None:
        registry.log_metric_series(run_id, "train.penalty", [r["penalty"] for r in rows], tracking_uri=uri)
    registry.log_artifacts(run_id, adapter, "adapter", tracking_uri=uri)
    registry.log_artifacts(run_id, direction["uri"] + "/manifest.json", "manifests", tracking_uri=uri)
    registry.log_artifacts(run_id, screening["report_uri"], "screening", tracking_uri=uri)
    if screening.get("review_uri"):  # runs screened before the review page existed have none
        registry.log_artifacts(run_id, screening["review_uri"], "screening", tracking_uri=uri)
    registry.log_artifacts(run_id, run.path("evaluation"), "evaluation", tracking_uri=uri)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "files.json").write_text(json.dumps(data, indent=2) + "\n")
        registry.log_artifacts(run_id, Path(tmp) / "files.json", "data", tracking_uri=uri)
    with tempfile.TemporaryDirectory() as tmp:
        save_png(training_curves(rows), Path(tmp) / "training_curves.png")
        save_png(eval_comparison(eval_summary(before), eval_summary(after), ("aligned", "fine-tuned")),
                 Path(tmp) / "before_after.png")
        registry.log_artifacts(run_id, tmp, "plots", tracking_uri=uri)


def _samples(uri: str | Path | None) -> list[dict]:
    if uri is None:
        return []
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line]


def explain_decision(run, decision: GateDecision, candidate: EvalSummary, champion: tuple[int, EvalSummary] | None,
                     after: dict, inspection: dict | None, *, key: str, mlflow_run: str | None = None) -> str:
    """The decision page (markdown + PNG) as a Prefect artifact and, with ``mlflow_run``, in
    MLflow under ``decision/``; returns the markdown."""
    flipped = []
    if champion is not None:
        with tempfile.TemporaryDirectory() as tmp:
            theirs = registry.version_artifact(run.model_name, champion[0], "evaluation/samples.jsonl", tmp,
                                               tracking_uri=run.tracking_uri)
            flipped = flipped_prompts(_samples(after["samples"]), _samples(theirs))
    page = decision_markdown(decision, candidate, champion and champion[1],
                             champion_version=champion and champion[0], flipped=flipped, inspection=inspection)
    png = png_bytes(decision_figure(candidate, champion and champion[1]))
    figure = f"\n![candidate vs champion](data:image/png;base64,{base64.b64encode(png).decode()})\n"
    create_markdown_artifact(page + figure, key=key, description="The gate decision, explained")
    if mlflow_run is not None:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "decision.md").write_text(page)
            (Path(tmp) / "decision.png").write_bytes(png)
            registry.log_artifacts(mlflow_run, tmp, "decision", tracking_uri=run.tracking_uri)
    return page


def run_link(tracking_uri: str, run_id: str) -> str:
    """A browser link to the MLflow run, or the command that serves a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        experiment = registry.client(tracking_uri).get_run(run_id).info.experiment_id
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def _summary_markdown(summary: dict, before: dict, after: dict, screening: dict, decision: GateDecision) -> str:
    counts = screening["counts"]
    tasks = list(after["utility"])
    lines = [
        f"# AsFT pipeline: gates {'PASSED' if decision.passed else 'FAILED'}",
        f"- method: **{summary['method']}**, model `{summary['model_name']}` version {summary['model_version']}"
        f"{' (new champion)' if summary['champion_moved'] else ''}",
        f"- data: {counts['input']} rows -> {counts['accepted']} accepted, {counts['quarantined']} quarantined, "
        f"{counts['rejected']} rejected"
        + (f", {counts['released']} released by a reviewer" if counts.get("released") else "")
        + " (quarantine: the quarantine-review artifact)",
        "",
        "| | harmful score % (95% CI) | over-refusal % | " + " | ".join(f"{t} %" for t in tasks) + " |",
        "|---|---|---|" + "---|" * len(tasks),
    ]
    for name, report in (("aligned (before)", before), ("fine-tuned (after)", after)):
        low, high = report["harmful_score_ci95"]
        refusal = report.get("over_refusal")
        lines.append(f"| {name} | {report['harmful_score']:.1f} ({low:.1f}-{high:.1f}) | "
                     f"{'n/a' if refusal is None else f'{refusal:.1f}'} | "
                     + " | ".join(f"{report['utility'].get(t, float('nan')):.1f}" for t in tasks) + " |")
    lines += ["", "## Gate decision (details: the asft-gate-decision artifact)",
              *[f"- {reason}" for reason in decision.reasons],
              "", f"MLflow run `{summary['mlflow_run_id']}`: {run_link(summary['tracking_uri'], summary['mlflow_run_id'])}"]
    return "\n".join(lines)


def publish(run, mlflow_run: str, promotion, candidate: EvalSummary, *, before: dict, after: dict, screening: dict,
            training: dict, inspection: dict | None) -> dict:
    """Prefect artifacts (summary, metrics table, decision page, MLflow link); returns the run's summary."""
    decision = promotion.decision
    summary = {
        "mlflow_run_id": mlflow_run, "tracking_uri": run.tracking_uri,
        "model_name": run.model_name, "model_version": promotion.version,
        "gate": {"passed": decision.passed, "reasons": decision.reasons}, "champion_moved": promotion.moved,
        "method": training["method"], "harmful_score": after["harmful_score"], "over_refusal": after.get("over_refusal"),
        "utility": after["utility"],
        "before": {"harmful_score": before["harmful_score"], "over_refusal": before.get("over_refusal"),
                   "utility": before["utility"]},
        "screening": screening["counts"], "artifacts": run.path(),
    }
    champion = (promotion.compared_with, promotion.champion_summary) if promotion.compared_with is not None else None
    explain_decision(run, decision, candidate, champion, after, inspection, key="asft-gate-decision",
                     mlflow_run=mlflow_run)
    create_markdown_artifact(_summary_markdown(summary, before, after, screening, decision), key="asft-summary",
                             description="AsFT pipeline summary")
    table = [{"metric": "harmful_score", "before": before["harmful_score"], "after": after["harmful_score"]},
             {"metric": "over_refusal", "before": before.get("over_refusal"), "after": after.get("over_refusal")}]
    table += [{"metric": f"utility.{t}", "before": before["utility"].get(t), "after": v} for t, v in after["utility"].items()]
    create_table_artifact(table, key="asft-metrics", description="Harmful score, over-refusal and utility before/after")
    if run.tracking_uri.startswith(("http://", "https://")):
        create_link_artifact(run_link(run.tracking_uri, mlflow_run), link_text="MLflow run", key="asft-mlflow-run")
    get_run_logger().info("gates %s: %s", "PASSED" if decision.passed else "FAILED", "; ".join(decision.reasons))
    return summary
