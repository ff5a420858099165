"""What a person looking at a pipeline run sees: Prefect artifacts and the MLflow record."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from asft import registry, storage
from asft.gates import GateDecision, eval_summary
from asft.plots import eval_comparison, save_png, training_curves


def log_run(run_id: str, tracking_uri: str, *, direction: dict, screening: dict, training: dict,
            before: dict, after: dict, adapter: str, evaluation_dir: str, inspection: dict | None) -> None:
    """Metrics, curves, artefacts and plots of one pipeline run into its MLflow run."""
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
        metrics.update({f"{name}.utility.{task}": value for task, value in report["utility"].items()})
    if inspection:
        metrics.update({f"update.{k}": v for k, v in inspection.items() if isinstance(v, (int, float))})
    registry.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None}, tracking_uri=tracking_uri)

    rows = [json.loads(line) for line in storage.read_text(storage.join(adapter, "metrics.jsonl")).splitlines() if line]
    registry.log_metric_series(run_id, "train.loss", [r["loss"] for r in rows], tracking_uri=tracking_uri)
    if rows and rows[0].get("penalty") is not None:
        registry.log_metric_series(run_id, "train.penalty", [r["penalty"] for r in rows], tracking_uri=tracking_uri)

    registry.log_artifacts(run_id, adapter, "adapter", tracking_uri=tracking_uri)
    registry.log_artifacts(run_id, direction["uri"] + "/manifest.json", "manifests", tracking_uri=tracking_uri)
    registry.log_artifacts(run_id, screening["report_uri"], "screening", tracking_uri=tracking_uri)
    registry.log_artifacts(run_id, evaluation_dir, "evaluation", tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        save_png(training_curves(rows), Path(tmp) / "training_curves.png")
        save_png(eval_comparison(eval_summary(before), eval_summary(after), ("aligned", "fine-tuned")),
                 Path(tmp) / "before_after.png")
        registry.log_artifacts(run_id, tmp, "plots", tracking_uri=tracking_uri)


def run_link(tracking_uri: str, run_id: str) -> str:
    """A browser link to the MLflow run, or the command that serves a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        experiment = registry.client(tracking_uri).get_run(run_id).info.experiment_id
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def publish(summary: dict, before: dict, after: dict, screening: dict, decision: GateDecision,
            inspection: dict | None) -> None:
    """Prefect artifacts: the markdown summary, a metrics table, the link to MLflow."""
    counts = screening["counts"]
    verdict = "PASSED" if decision.passed else "FAILED"
    lines = [
        f"# AsFT pipeline: gates {verdict}",
        f"- method: **{summary['method']}**, model `{summary['model_name']}` version {summary['model_version']}"
        f"{' (new champion)' if summary['champion_moved'] else ''}",
        f"- data: {counts['input']} rows -> {counts['accepted']} accepted, {counts['quarantined']} quarantined, "
        f"{counts['rejected']} rejected",
        "",
        "| | harmful score % (95% CI) | " + " | ".join(f"{t} %" for t in after["utility"]) + " |",
        "|---|---|" + "---|" * len(after["utility"]),
    ]
    for name, report in (("aligned (before)", before), ("fine-tuned (after)", after)):
        low, high = report["harmful_score_ci95"]
        lines.append(f"| {name} | {report['harmful_score']:.1f} ({low:.1f}-{high:.1f}) | "
                     + " | ".join(f"{report['utility'].get(t, float('nan')):.1f}" for t in after["utility"]) + " |")
    if inspection:
        lines += ["", f"Update energy orthogonal to the alignment direction: "
                      f"{100 * inspection['mean_orth_C']:.1f} % (mean over modules, anchor C)."]
    lines += ["", "## Gate decision", *[f"- {reason}" for reason in decision.reasons],
              "", f"MLflow run `{summary['mlflow_run_id']}`: {run_link(summary['tracking_uri'], summary['mlflow_run_id'])}"]
    create_markdown_artifact("\n".join(lines), key="asft-summary", description="AsFT pipeline summary")
    table = [{"metric": "harmful_score", "before": before["harmful_score"], "after": after["harmful_score"]}]
    table += [{"metric": f"utility.{t}", "before": before["utility"].get(t), "after": v} for t, v in after["utility"].items()]
    create_table_artifact(table, key="asft-metrics", description="Harmful score and utility before/after")
    if summary["tracking_uri"].startswith(("http://", "https://")):
        create_link_artifact(run_link(summary["tracking_uri"], summary["mlflow_run_id"]), link_text="MLflow run",
                             key="asft-mlflow-run")
