"""LoX, low-rank extrapolation (Perin et al., "LoX: Low-Rank Extrapolation Robustifies LLM Safety
Against Fine-tuning", COLM 2025, arXiv 2506.15606): before fine-tuning, push the aligned
weights further along the top-k subspace of the alignment update. Training-free; needs V.

Per module of a direction folder (V = W_aligned - W_base, (out, in) layout)::

    W_lox = W_aligned + alpha * Proj_k(V),   Proj_k(V) = U_k U_k^T V = U_k S_k W_k^T

(U S W^T the SVD of V), computed in float64 and stored in the weight's own dtype; every other
tensor and file of the checkpoint is copied unchanged (shards without a target module byte for
byte; a shard holding one is rewritten with the same names, dtypes, metadata and values).
Weights stored (in, out) (Conv1D) get the transpose of the change, as the direction's manifest
records them. The reference code (VITA-Group/LoX, ``safety/LoX.py``) extrapolates every 2-D
weight; here the modules are the direction's, so extract the direction with the targets to
extrapolate (the q/v preset by default, ``--target-regex`` for more).

Output: a complete Hugging Face checkpoint that ``asft train`` / ``asft evaluate`` load like
any model, written atomically, with ``lox_manifest.json``: the aligned checkpoint's and the
direction's hashes, k, alpha and, per module, the share of ||V||^2 that the top k keep and
||alpha V_k|| / ||W||.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from asft import storage
from asft.architectures import checkpoint_layout
from asft.direction import Direction, load_direction, stored_tensors
from asft.errors import AsftError
from asft.io.safetensors import tensor_files
from asft.modeling import resolve_checkpoint
from asft.regularizer import low_rank_factor

FORMAT = "asft-lox/1"
MANIFEST = "lox_manifest.json"
KIND = "lox-model"
_EXACT_SVD_MAX = 1024  # larger: randomized range finder (a float64 SVD of 4096^2 takes a minute on a CPU)


class LoxConfig(BaseModel):
    """Extrapolate an aligned checkpoint along the top-k subspace of its alignment direction."""

    model_config = ConfigDict(extra="forbid")

    aligned: str = Field(description="Aligned checkpoint the direction was extracted from (HF folder; path or URI)")
    direction: str = Field(description="Direction folder from `asft direction` (V = W_aligned - W_base)")
    out: str = Field(description="Output folder for the extrapolated checkpoint (a new or empty folder, or a LoX output)")
    # defaults: the paper's main setting (Llama-2-7B aligned by DPO on 65.6k pairs: k = its effective rank 6, alpha 1.25;
    # it reports k = 3 for most other 7B models); the reference script's own defaults are k = 0 (full rank), coef 1
    top_k: int = Field(6, ge=1, le=65536, description="k: how many of V's leading singular directions are extrapolated")
    alpha: float = Field(1.25, gt=0.0, le=100.0, allow_inf_nan=False,
                         description="Extrapolation factor: W + alpha * V_k (the reference code's coef)")


def truncated(V: torch.Tensor, k: int) -> tuple[torch.Tensor, str]:
    """Proj_k(V) = U_k U_k^T V in float64: exact SVD for small modules, else the span of the
    randomized range finder's factor (``low_rank_factor``, seeded: the same bytes every run)."""
    V64 = V.double()
    if min(V.shape) <= _EXACT_SVD_MAX:
        U, S, Wh = torch.linalg.svd(V64, full_matrices=False)
        return (U[:, :k] * S[:k]) @ Wh[:k], "exact"
    U = torch.linalg.qr(low_rank_factor(V.float(), k).double())[0]
    return U @ (U.T @ V64), "randomized"


def _check(config: LoxConfig, direction: Direction, stored: dict, transposed: frozenset[str]) -> None:
    """k within every module's rank bound, shapes and orientation as the direction says."""
    for name, V in direction.vectors.items():
        if config.top_k > min(V.shape):
            raise AsftError(f"--top-k {config.top_k} exceeds the rank of {name} (V is {list(V.shape)}, at most "
                            f"{min(V.shape)} singular directions); give --top-k between 1 and {min(V.shape)}")
        direction.check_orientation(name, name in transposed, config.direction)
        shape = stored[name].shape[::-1] if name in transposed else stored[name].shape
        if list(V.shape) != list(shape):
            raise AsftError(f"direction {config.direction}: {name} has shape {list(V.shape)}, the aligned model's "
                            f"weight (out, in) {list(shape)}; use the direction extracted from this aligned model")


def _extrapolate_shard(path: Path, names: list[str], config: LoxConfig, direction: Direction,
                       transposed: frozenset[str], out: Path) -> dict[str, dict]:
    """Rewrite one shard (``out``: its copy) with its target weights extrapolated; returns the
    per-module figures: the share of ||V||^2 in V_k, ||alpha V_k|| / ||W||, how V_k was found."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(path, framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(path)
    figures = {}
    for name in names:
        key, V = name + ".weight", direction.vectors[name]
        W = tensors[key]
        V_k, method = truncated(V, config.top_k)
        norm = torch.linalg.matrix_norm
        figures[name] = {"kept_energy": (norm(V_k) / norm(V.double())).item() ** 2 if norm(V) > 0 else None,
                         "relative_change": config.alpha * (norm(V_k) / norm(W.double())).item(), "svd": method}
        tensors[key] = (W.double() + config.alpha * (V_k.T if name in transposed else V_k)).to(W.dtype)
    save_file(tensors, out, metadata=metadata)
    return figures


def extrapolate(config: LoxConfig) -> dict:
    """Write the LoX checkpoint to ``config.out`` atomically; returns its manifest."""
    from asft.io.hashing import remembered_checkpoint_sha256

    started = time.perf_counter()
    storage.check_output(config.out, KIND, inputs=(config.aligned, config.direction))
    folder = resolve_checkpoint(config.aligned, "aligned model")
    direction = load_direction(config.direction)
    modules = direction.manifest["modules"]
    files = tensor_files(folder, "aligned model")
    absent = [name for name in modules if name + ".weight" not in files]
    if absent:
        raise AsftError(f"aligned model {config.aligned} has no {absent[0]}.weight ({len(absent)} of the direction's "
                        f"modules missing); use the aligned model the direction {config.direction} was extracted from")
    stored = stored_tensors(files, modules, f"aligned model {config.aligned}")
    transposed = checkpoint_layout(folder, modules).transposed
    _check(config, direction, stored, transposed)
    aligned_sha256 = remembered_checkpoint_sha256(folder)
    recorded = (direction.manifest.get("aligned") or {}).get("sha256")
    if recorded != aligned_sha256:
        raise AsftError(f"direction {config.direction} was extracted from another checkpoint (sha256 {recorded}) "
                        f"than {config.aligned} ({aligned_sha256}); extrapolate the aligned model the direction came from")
    by_shard = defaultdict(list)
    for name in modules:
        by_shard[files[name + ".weight"]].append(name)
    with storage.staged_dir(config.out, KIND) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True,
                        ignore=lambda _, names: [n for n in names if n in (storage.OUTPUT_MARKER, MANIFEST)])
        figures = {}
        for path, names in sorted(by_shard.items()):
            figures.update(_extrapolate_shard(path, names, config, direction, transposed,
                                              tmp / path.relative_to(folder)))
        manifest = {"format": FORMAT, "method": "lox",
                    "aligned": {"uri": config.aligned, "sha256": aligned_sha256},
                    "direction": {"uri": config.direction, "sha256": direction.sha256,
                                  "source": direction.manifest.get("source", "base")},
                    "top_k": config.top_k, "alpha": config.alpha,
                    "changed_files": sorted(path.relative_to(folder).as_posix() for path in by_shard),
                    "modules": figures, "seconds": round(time.perf_counter() - started, 3)}
        storage.write_json(tmp / MANIFEST, manifest)
    return manifest
