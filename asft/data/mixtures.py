"""The paper's fine-tuning mixtures: n rows, a share p of them harmful, with ground truth.

The labels file is the asft-bench companion format ``{"file", "rows", "harmful_indices"}``,
which ``asft screen --labels`` reads.
"""

from __future__ import annotations

import random

from asft import storage
from asft.data.ingest import IngestConfig, ingest
from asft.data.records import to_row
from asft.errors import AsftError
from asft.templates import Record


def build_mixture(benign: list[Record], harmful: list[Record], n: int, p: float,
                  seed: int = 0) -> tuple[list[Record], list[int]]:
    """``n`` rows, ``round(p * n)`` drawn from ``harmful`` and the rest from ``benign`` (without
    replacement), shuffled with ``seed``; returns (rows, 0-based indices of the harmful rows)."""
    if n < 1 or not 0.0 <= p <= 1.0:
        raise AsftError(f"mixture needs n >= 1 and 0 <= p <= 1, got n={n}, p={p}")
    n_harmful = round(p * n)
    if n_harmful > len(harmful) or n - n_harmful > len(benign):
        raise AsftError(f"mixture of n={n} at p={p:g} needs {n_harmful} harmful and {n - n_harmful} benign rows; "
                        f"the sources have {len(harmful)} and {len(benign)}")
    rng = random.Random(seed)
    picked = ([(True, r) for r in rng.sample(harmful, n_harmful)]
              + [(False, r) for r in rng.sample(benign, n - n_harmful)])
    rng.shuffle(picked)
    return [r for _, r in picked], [i for i, (bad, _) in enumerate(picked) if bad]


def labels_uri(data_uri: str) -> str:
    base = data_uri[: -len(".jsonl")] if data_uri.endswith(".jsonl") else data_uri
    return base + ".harmful.json"


def write_mixture(benign_uri: str, harmful_uri: str, out_uri: str, n: int, p: float, seed: int = 0,
                  config: IngestConfig | None = None) -> dict:
    """Read both sources (any source ``asft screen`` reads), build the mixture, write ``out_uri``
    (JSONL: Alpaca fields, chat messages for conversations) and its labels next to it;
    returns {"file", "labels", "rows", "harmful_indices"}."""
    benign, harmful = ingest(benign_uri, config), ingest(harmful_uri, config)
    rows, harmful_indices = build_mixture([r.record for r in benign.rows], [r.record for r in harmful.rows], n, p, seed)
    storage.write_jsonl(out_uri, [to_row(r) for r in rows])
    labels = {"file": out_uri.rstrip("/").rsplit("/", 1)[-1], "rows": n, "harmful_indices": harmful_indices}
    storage.write_json(labels_uri(out_uri), labels)
    return {**labels, "file": out_uri, "labels": labels_uri(out_uri)}
