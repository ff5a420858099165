"""Thresholds from a target false-positive rate: the user says how many benign rows they accept
to lose (default 3 %), the screener's threshold follows from scores on benign rows it did not
learn from (the user's own labelled sample, or the shipped set's out-of-fold scores)."""

from __future__ import annotations

from typing import Any

import numpy as np

from asft.statistics import wilson_interval


def threshold_for_fpr(benign_scores: np.ndarray, target_fpr: float, weights: np.ndarray | None = None) -> float:
    """The smallest threshold ``t`` such that at most ``target_fpr`` of the benign rows score
    above it (a row is flagged when its score > t); with ``weights``, at most that share of
    their weight."""
    order = np.argsort(-np.asarray(benign_scores, dtype=np.float64), kind="stable")
    scores = np.asarray(benign_scores, dtype=np.float64)[order]
    weight = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    flagged_share = np.cumsum(weight) / weight.sum()  # of the benign weight, when the top k + 1 rows are flagged
    allowed = int(np.searchsorted(flagged_share, target_fpr + 1e-9, side="right"))
    return float(scores[min(allowed, len(scores) - 1)])


def operating_point(threshold: float, benign_scores: np.ndarray, harmful_scores: np.ndarray | None,
                    target_fpr: float, calibrated_on: str) -> dict[str, Any]:
    """What the report prints: the threshold, the FPR it gives on the calibration rows (with its
    95 % Wilson interval) and, when harmful rows were there too, the recall."""
    flagged_benign = int((np.asarray(benign_scores) > threshold).sum())
    low, high = wilson_interval(flagged_benign, len(benign_scores))
    point = {"threshold": round(threshold, 6), "target_fpr": target_fpr, "calibrated_on": calibrated_on,
             "benign_rows": len(benign_scores), "fpr": round(flagged_benign / len(benign_scores), 4),
             "fpr_95ci": [round(low, 4), round(high, 4)]}
    if harmful_scores is not None and len(harmful_scores):
        caught = int((np.asarray(harmful_scores) > threshold).sum())
        low, high = wilson_interval(caught, len(harmful_scores))
        point.update(harmful_rows=len(harmful_scores), recall=round(caught / len(harmful_scores), 4),
                     recall_95ci=[round(low, 4), round(high, 4)])
    return point


def calibrate(screener, sample: str, labels: str, target_fpr: float) -> tuple[float, dict[str, Any]]:
    """(threshold, operating point) of ``screener`` at ``target_fpr`` on a labelled sample (any
    source asft screen reads; ``labels`` a boolean column or a harmful_indices file)."""
    from asft.data.ingest import IngestConfig, ingest
    from asft.data.report import load_labels
    from asft.errors import AsftError

    data = ingest(sample, IngestConfig(require_output=False))
    truth = load_labels(labels, data)
    if not any(not truth[r.row_index] for r in data.rows):
        raise AsftError(f"calibration sample {sample}: no benign rows (labels {labels}); the threshold is set on "
                        "benign rows, so give a sample with both kinds")
    scores = np.array([r.score for r in screener.score([row.record for row in data.rows])])
    harmful = np.array([truth[r.row_index] for r in data.rows])
    threshold = threshold_for_fpr(scores[~harmful], target_fpr)
    return threshold, operating_point(threshold, scores[~harmful], scores[harmful], target_fpr,
                                      f"{sample} ({len(data.rows)} rows)")
