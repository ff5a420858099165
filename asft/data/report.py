"""Ground-truth labels and the screening quality figures (precision, recall, F1, FPR)."""

from __future__ import annotations

from typing import Any

from asft import storage
from asft.data.ingest import Ingested
from asft.errors import AsftError


def _truthy(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def load_labels(spec: str, ingested: Ingested) -> dict[int, bool]:
    """Harmful-or-not per row index, from a ``{"harmful_indices": [...]}`` file (0-based input
    rows, the asft-bench companion format) or from a boolean column of the data."""
    is_file = spec.endswith(".json") or "://" in spec or storage.is_local(spec) and storage.local_path(spec).is_file()
    if is_file:
        payload = storage.read_json(spec)
        indices = payload.get("harmful_indices") if isinstance(payload, dict) else None
        if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise AsftError(f"labels {spec}: expected a JSON object {{\"harmful_indices\": [0-based row numbers]}}")
        outside = [i for i in indices if not 0 <= i < ingested.input_rows]
        if outside:
            raise AsftError(f"labels {spec}: row {outside[0]} is outside the data's {ingested.input_rows} rows; "
                            "are these the labels of this file?")
        harmful = set(indices)
        return {i: i in harmful for i in range(ingested.input_rows)}
    labels = {}
    for row in ingested.rows:
        value = _truthy(row.raw.get(spec))
        if value is None:
            raise AsftError(f"labels: column {spec!r} of row {row.row_index} (line {row.line}) is "
                            f"{row.raw.get(spec)!r}, not a boolean; give a boolean column or a labels JSON file")
        labels[row.row_index] = value
    return labels


def quality(truth: list[bool], flagged: list[bool]) -> dict[str, Any]:
    """Precision, recall, F1, false-positive rate and the confusion matrix ("harmful" = positive)."""
    tp = sum(t and f for t, f in zip(truth, flagged, strict=True))
    fp = sum(f and not t for t, f in zip(truth, flagged))
    fn = sum(t and not f for t, f in zip(truth, flagged))
    tn = len(truth) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp + fp and tp + fn else None)
    return {"precision": precision, "recall": recall, "f1": f1,
            "false_positive_rate": fp / (fp + tn) if fp + tn else None,
            "confusion_matrix": {"true_positive": tp, "false_positive": fp, "false_negative": fn, "true_negative": tn}}
