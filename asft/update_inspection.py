"""Where did a fine-tuning update go: along the alignment direction or across it?

Per target module, with ``V`` the alignment direction and ``n = ||V||_F``:

- ``along_C = ||C dW|| / ||dW||`` and ``orth_C = ||(I - C) dW|| / ||dW||`` with the paper's
  anchor ``C = V V^T / n``. C is not a projector, so ``along_C^2 + orth_C^2`` need not be 1;
  ``orth_C`` is exactly what the AsFT penalty pushes down.
- ``along_P``, ``orth_P``: the same with the true projector ``P = U_k U_k^T`` on the top-k
  left singular vectors of V (these two do add up in squares to 1).
- ``cosine``: between vec(dW) and vec(V).
- ``penalty``: ``||(I - C) B A||_F^2``, the AsFT loss term as training computes it (the
  reference's unscaled ``B @ A`` for adapters; ``dW`` itself for full checkpoints).

An adapter's update is ``dW = scaling * B @ A`` with PEFT's scaling ``alpha / r``
(``alpha / sqrt(r)`` with rsLoRA): shares and cosines do not depend on it, norms do.
Adapters are read from ``adapter_model.safetensors`` without loading any model and kept
factored, so nothing of size (out, in) is built; C is never materialised (``C X`` is
computed as ``V (V^T X) / n``). Full checkpoints are streamed module by module with
``safe_open``: ``dW = W_ft - W_aligned``.

Everything is in nn.Linear's (out, in) layout, as V is: a LoRA update B A already is (peft's
for Conv1D too); a full checkpoint's difference is transposed for the modules it stores as
(in, out) (Conv1D, read off the model skeleton), after checking the direction agrees.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field

from asft.errors import AsftError
from asft.storage import check_output, join, materialize, read_json, staged_dir

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class InspectConfig(BaseModel):
    """How to decompose an update against the alignment direction."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(8, ge=1, le=4096, description="Rank k of the true projector P = U_k U_k^T on V's top-k left singular vectors")


@dataclass(frozen=True)
class ModuleUpdate:
    """One module's update ``dW``: dense (``A is None``, ``B`` is dW) or ``scaling * B @ A``."""

    B: torch.Tensor
    A: torch.Tensor | None = None
    scaling: float = 1.0

    def energy(self, left: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """``||L dW||_F^2`` for a left-multiplying linear map L (identity when None).

        Factored: ``||L(B) A||^2 = sum((X^T X) * (A A^T))`` with X = L(B), two (r, r) matrices.
        """
        X = self.B if left is None else left(self.B)
        if self.A is None:
            return float(X.square().sum())
        return self.scaling ** 2 * float(((X.T @ X) * (self.A @ self.A.T)).sum())

    def inner(self, M: torch.Tensor) -> float:
        """``<M, dW>_F``; factored: ``scaling * sum((B^T M) * A)``."""
        if self.A is None:
            return float((M * self.B).sum())
        return self.scaling * float(((self.B.T @ M) * self.A).sum())

    def dense(self) -> torch.Tensor:
        return self.B if self.A is None else self.scaling * (self.B @ self.A)


def decompose(name: str, update: ModuleUpdate, V: torch.Tensor, top_k: int) -> dict:
    """The table row of one module (shares are None when the update is zero)."""
    from asft.regularizer import DirectionAnchor, ProjectorAnchor, top_k_projector

    V = V.float()
    shape = tuple(update.B.shape) if update.A is None else (update.B.shape[0], update.A.shape[1])
    if shape != tuple(V.shape):
        raise AsftError(f"module {name}: update has shape {shape} but the direction has {tuple(V.shape)}; "
                        "use the direction built for this model")
    norm = float(torch.linalg.matrix_norm(V))
    if norm == 0.0:
        raise AsftError(f"direction module {name}: V is all zeros (aligned == base there); rebuild the direction or drop the module")
    C = DirectionAnchor(V, torch.tensor(norm))
    P = ProjectorAnchor(top_k_projector(V, min(top_k, min(V.shape))))
    if update.A is None:
        orth_c = update.energy(lambda X: X - C.apply(X))
        orth_p = update.energy(lambda X: X - P.apply(X))
        penalty = orth_c
    else:
        penalty = float(C.penalty(update.A, update.B))
        orth_c = update.scaling ** 2 * penalty
        orth_p = float(P.penalty(update.A, update.B, scaling=update.scaling))
    energy = update.energy()
    row = {"module": name, "update_norm": math.sqrt(energy), "direction_norm": norm, "rank_k": P.U.shape[1],
           "along_C": None, "orth_C": None, "along_P": None, "orth_P": None, "cosine": None, "penalty": penalty}
    if energy > 0.0:
        row.update(
            along_C=math.sqrt(update.energy(C.apply) / energy),
            orth_C=math.sqrt(orth_c / energy),
            along_P=math.sqrt(update.energy(P.apply) / energy),
            orth_P=math.sqrt(orth_p / energy),
            cosine=update.inner(V) / (norm * math.sqrt(energy)),
        )
    return row


# ---------------------------------------------------------------- reading updates

def _adapter_scaling(config: dict, module: str, rank: int) -> float:
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):  # PEFT's rule for per-module patterns
            alpha = value
            break
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def adapter_updates(uri: str) -> dict[str, ModuleUpdate]:
    """The LoRA factors of a PEFT adapter folder, keyed by module name (no model loaded)."""
    from safetensors import safe_open

    from asft.io.safetensors import safetensors_header

    folder = materialize(uri)
    weights, config_path = folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG
    if not weights.exists() or not config_path.exists():
        raise AsftError(f"adapter {uri}: needs {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}; give a PEFT adapter folder saved with safetensors")
    safetensors_header(weights)  # a cut file fails with its name
    config = read_json(str(config_path))
    if not isinstance(config, dict):
        raise AsftError(f"adapter {uri}: {ADAPTER_CONFIG} is not a JSON object; re-save the adapter (save_pretrained)")
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise AsftError(f"adapter {uri}: only plain LoRA adapters are supported (got peft_type={config.get('peft_type')}, "
                        f"use_dora={config.get('use_dora', False)})")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():
            match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
            if match is None:
                raise AsftError(f"adapter {uri}: tensor {key} is not a LoRA A/B weight; only plain LoRA on linear layers is supported")
            factors.setdefault(match.group(1), {})[match.group(2)] = fh.get_tensor(key).float()
    updates = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise AsftError(f"adapter {uri}: module {module} has lora_{''.join(pair)} only; the adapter file is incomplete")
        updates[module] = ModuleUpdate(B=pair["B"], A=pair["A"], scaling=_adapter_scaling(config, module, pair["A"].shape[0]))
    return updates


def checkpoint_updates(checkpoint: str, aligned: str, modules: list[str],
                       transposed: frozenset[str] = frozenset()) -> Iterator[tuple[str, ModuleUpdate]]:
    """``W_ft - W_aligned`` for each module in (out, in) layout (``transposed``: the modules
    stored as (in, out)), read one tensor at a time (never a whole model)."""
    from asft.io.safetensors import read_tensor, tensor_files
    from asft.modeling import resolve_checkpoint

    tuned_files = tensor_files(resolve_checkpoint(checkpoint, "checkpoint"), "checkpoint")
    aligned_files = tensor_files(resolve_checkpoint(aligned, "aligned model"), "aligned model")
    for module in modules:
        key = f"{module}.weight"
        for files, uri in ((tuned_files, checkpoint), (aligned_files, aligned)):
            if key not in files:
                raise AsftError(f"{uri}: has no tensor {key} (a direction module); use the checkpoint the direction was built for")
        update = read_tensor(tuned_files[key], key).float() - read_tensor(aligned_files[key], key).float()
        yield module, ModuleUpdate(B=update.T if module in transposed else update)


def _transposed(loaded, aligned: str, direction: str) -> frozenset[str]:
    """The direction's modules that the aligned checkpoint stores as (in, out), checked against the direction."""
    from asft.architectures import checkpoint_layout
    from asft.modeling import resolve_checkpoint

    transposed = checkpoint_layout(resolve_checkpoint(aligned, "aligned model"), sorted(loaded.vectors)).transposed
    for name in loaded.vectors:
        loaded.check_orientation(name, name in transposed, direction)
    return transposed


# ---------------------------------------------------------------- the report

_COLUMNS = ("module", "update_norm", "direction_norm", "rank_k", "along_C", "orth_C", "along_P", "orth_P", "cosine", "penalty")


def _mean(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    return sum(values) / len(values) if values else None


def _markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS) + "\n"
    cell = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    return head + "".join("| " + " | ".join(cell(row[c]) for c in _COLUMNS) + " |\n" for row in rows)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def bar_plot(rows: list[dict], top_k: int):
    """Per module: the update's share along the direction vs orthogonal to it, for C and for P."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [row["module"] for row in rows]
    x = list(range(len(rows)))
    fig = Figure(figsize=(max(8.0, 0.35 * len(rows) + 4), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind, title in ((axes[0], "C", "anchor C = V V^T / ||V||_F"), (axes[1], "P", f"projector P = U_k U_k^T (k={top_k})")):
        # a zero update has no shares: drawn as empty slots
        ax.bar([i - 0.2 for i in x], [row[f"along_{kind}"] or 0.0 for row in rows], width=0.4, label="along V")
        ax.bar([i + 0.2 for i in x], [row[f"orth_{kind}"] or 0.0 for row in rows], width=0.4, label="orthogonal to V")
        ax.set_xticks(x, names, rotation=90, fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("module")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of the update  ||. dW||_F / ||dW||_F")
    axes[0].legend(fontsize=8)
    return fig


def inspect_update(direction: str, *, adapter: str | None = None, checkpoint: str | None = None,
                   aligned: str | None = None, out: str | None = None,
                   config: InspectConfig | None = None) -> dict:
    """Decompose an adapter's or a checkpoint's update against a direction.

    Returns a small summary (mean shares, per-module rows, file paths when ``out`` is given)
    and writes ``inspection.{json,csv,md,png}`` there atomically.
    """
    from asft.direction import load_direction
    from asft.plots import save_png

    config = config or InspectConfig()
    if (adapter is None) == (checkpoint is None):
        raise AsftError("give exactly one of an adapter folder or a fine-tuned checkpoint to inspect")
    if out is not None:
        check_output(out, "inspection", inputs=(direction, adapter, checkpoint, aligned))
    loaded = load_direction(direction)
    vectors: dict[str, torch.Tensor] = loaded.vectors
    if adapter is not None:
        updates = adapter_updates(adapter)
        missing = sorted(set(updates) - set(vectors))
        if missing:
            raise AsftError(f"adapter {adapter}: modules {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                            f"are not in the direction {direction}; build the direction for the adapter's target modules")
        untouched = sorted(set(vectors) - set(updates))
        stream: Iterator[tuple[str, ModuleUpdate]] = iter(updates.items())
        source = {"adapter": adapter}
    else:
        aligned = aligned or (loaded.manifest.get("aligned") or {}).get("uri")
        if not aligned:
            raise AsftError(f"direction {direction}: its manifest names no aligned model; pass --aligned")
        untouched = []
        stream = checkpoint_updates(checkpoint, aligned, sorted(vectors), _transposed(loaded, aligned, direction))
        source = {"checkpoint": checkpoint, "aligned": aligned}
    rows = [decompose(name, update, vectors[name], config.top_k) for name, update in stream]
    summary = {
        **source,
        "direction": direction,
        "top_k": config.top_k,
        "modules": len(rows),
        "direction_modules_not_updated": untouched,
        **{f"mean_{key}": _mean(rows, key) for key in ("along_C", "orth_C", "along_P", "orth_P", "cosine")},
        "total_penalty": sum(row["penalty"] for row in rows),
        "rows": rows,
    }
    if out is not None:
        with staged_dir(out, "inspection") as tmp:
            (tmp / "inspection.md").write_text(_markdown(rows))
            (tmp / "inspection.csv").write_text(_csv(rows))
            save_png(bar_plot(rows, config.top_k), tmp / "inspection.png")
            (tmp / "inspection.json").write_text(json.dumps(summary, indent=2) + "\n")
        summary["files"] = {name: join(out, f"inspection.{name}") for name in ("json", "csv", "md", "png")}
        summary["plot"] = summary["files"]["png"]
    return summary
