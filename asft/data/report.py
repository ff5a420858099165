"""Ground-truth labels and the screening quality figures (precision, recall, F1, FPR)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from asft import storage
from asft.data.ingest import Ingested, Row
from asft.errors import AsftError


def _truthy(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


class Labels:
    """Harmful-or-not per row, from a ``{"harmful_indices": [...]}`` file (0-based input rows,
    the asft-bench companion format; read now, before any work) or from a boolean column of
    the data (read from each row as it comes)."""

    def __init__(self, spec: str):
        self.spec = spec
        self.harmful: set[int] | None = None  # None: the labels are a column
        if spec.endswith(".json") or "://" in spec or storage.is_local(spec) and storage.local_path(spec).is_file():
            payload = storage.read_json(spec)
            indices = payload.get("harmful_indices") if isinstance(payload, dict) else None
            if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
                raise AsftError(f"labels {spec}: expected a JSON object {{\"harmful_indices\": [0-based row numbers]}}")
            self.harmful = set(indices)

    def of(self, row: Row) -> bool:
        if self.harmful is not None:
            return row.row_index in self.harmful
        value = _truthy(row.raw.get(self.spec))
        if value is None:
            raise AsftError(f"labels: column {self.spec!r} of row {row.row_index} ({row.file}:{row.line}) is "
                            f"{row.raw.get(self.spec)!r}, not a boolean; give a boolean column or a labels JSON file")
        return value

    def of_rejected(self, row_index: int) -> bool:
        """A rejected row has no columns to read: only a labels file knows it."""
        return self.harmful is not None and row_index in self.harmful

    def check_rows(self, input_rows: int) -> None:
        outside = sorted(i for i in self.harmful or () if not 0 <= i < input_rows)
        if outside:
            raise AsftError(f"labels {self.spec}: row {outside[0]} is outside the data's {input_rows} rows; "
                            "are these the labels of this file?")


def load_labels(spec: str, ingested: Ingested) -> dict[int, bool]:
    """Harmful-or-not per row index of rows read all at once (see :class:`Labels`)."""
    labels = Labels(spec)
    labels.check_rows(ingested.input_rows)
    if labels.harmful is not None:
        return {i: i in labels.harmful for i in range(ingested.input_rows)}
    return {row.row_index: labels.of(row) for row in ingested.rows}


def quality_of_counts(counts: Counter) -> dict[str, Any]:
    """Precision, recall, F1 and false-positive rate of a confusion matrix counted as
    ``{(harmful, flagged): n}`` ("harmful" = positive)."""
    tp, fp, fn, tn = (counts[(True, True)], counts[(False, True)], counts[(True, False)], counts[(False, False)])
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp + fp and tp + fn else None)
    return {"precision": precision, "recall": recall, "f1": f1,
            "false_positive_rate": fp / (fp + tn) if fp + tn else None,
            "confusion_matrix": {"true_positive": tp, "false_positive": fp, "false_negative": fn, "true_negative": tn}}


def quality(truth: list[bool], flagged: list[bool]) -> dict[str, Any]:
    """Precision, recall, F1, false-positive rate and the confusion matrix ("harmful" = positive)."""
    return quality_of_counts(Counter(zip(truth, flagged, strict=True)))
