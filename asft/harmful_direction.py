"""AsFTAlt's direction, for an aligned model that ships without its base: learned from data.

The AsFT paper's Table 8 variant. The aligned model is fine-tuned briefly on a small harmful
set (harmful prompts with compliant answers) with the project's own trainer (``train`` with
method sft, LoRA on the target modules), giving ``W_harmful = W_aligned + s B A``; per target
module the direction is

    V = W_aligned - W_harmful = -s B A            (s = lora_alpha / r)

so it points from the harmful model to the aligned one, as ``W_aligned - W_base`` does, and it
is written in the base-derived folder format (``direction.safetensors`` + ``manifest.json``,
``"source": "harmful-data"``): ``load_direction``, the trainer, Safe LoRA and ``asft
landscape`` read it unchanged. V is formed from the factors in float32, not as a difference of
merged weights (which would lose the small update to cancellation).

Why LoRA and not full fine-tuning of the target modules: it is the trainer as it is (every
data format, template, seed, device and launcher), a harmful fine-tuning attack is itself a
LoRA update, and on a 7B model full fine-tuning of q/v holds about 17 GB of weights, gradients
and AdamW state against about 70 MB for LoRA r 8. The price is a rank-r V (``harmful_lora_r``,
recorded per module in ``ranks``): the paper's anchor C = V V^T / ||V|| then has r non-zero
eigenvalues. On the tiny sandbox (before its recalibration) the rank barely changed what the
anchor charges (r 8 against a full-rank r 64). What does matter: the penalty is blind to V's
sign and span(V) is where harmful tuning goes, so this anchor charged a harmful update less than
a benign one (0.70 against 0.94 of its squared norm; the base direction: 0.96 and 0.98).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from asft import storage
from asft.architectures import checkpoint_layout, model_type
from asft.direction import (
    DIRECTION_FILE,
    FORMAT,
    MANIFEST_FILE,
    DirectionConfig,
    aligned_targets,
    check_matrices,
    spread_modules,
    stored_tensors,
    top_singular_values,
)
from asft.errors import AsftError
from asft.io.hashing import checkpoint_sha256
from asft.io.streaming import StreamingSafetensorsWriter, TensorReader
from asft.modeling import resolve_checkpoint

SOURCE = "harmful-data"


def tuning_config(config: DirectionConfig, out: str):
    """The harmful tuning as a training run: the preset's batch size and length, a constant
    learning rate, exactly ``harmful_steps`` steps (1000 epochs of at least one step each bound
    them no lower than ``harmful_steps``' own limit)."""
    from asft.training import TrainConfig

    return TrainConfig(model=config.aligned, data=config.harmful_data, out=out, method="sft",
                       preset=config.harmful_preset, lr=config.harmful_lr, lr_decay=1.0, epochs=1000,
                       max_steps=config.harmful_steps, seed=config.harmful_seed, lora_r=config.harmful_lora_r,
                       target_modules=config.target_modules, target_regex=config.target_regex)


def _aligned_record(config: DirectionConfig, folder: Path, stored: dict, modules: list[str]) -> dict:
    """The aligned input as the base-derived manifest records it (whole-checkpoint and target-tensor hashes)."""
    with ThreadPoolExecutor(1, thread_name_prefix="asft-checkpoint-sha256") as hashing:
        whole = None if config.aligned_sha256 else hashing.submit(checkpoint_sha256, folder)
        reader = TensorReader()
        for name in modules:  # the target tensors' stored bytes, in module order (as extraction hashes them)
            t = stored[name]
            buffer = torch.empty(torch.Size(t.shape).numel(), dtype=torch.float32)
            for done in reader.copy_into(t, buffer):
                done.result()
        return {"uri": config.aligned, "model_type": model_type(folder),
                "sha256": config.aligned_sha256 or whole.result(),
                "sha256_source": "given" if config.aligned_sha256 else "computed", "tensors_sha256": reader.close()}


def update_rank(A: torch.Tensor, B: torch.Tensor) -> int:
    """rank(B A) from the factors: with B = Q_B R_B and A^T = Q_A R_A, B A = Q_B (R_B R_A^T) Q_A^T,
    so it is the rank of an (r, r) matrix (no SVD of the (out, in) update)."""
    return int(torch.linalg.matrix_rank(torch.linalg.qr(B)[1] @ torch.linalg.qr(A.T)[1].T))


def _update_factors(adapter: Path, modules: list[str], where: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module -> (lora_A, lora_B) of the trained adapter, which must cover exactly the target modules."""
    from safetensors.torch import load_file

    from asft.training.adapter import ADAPTER_FILE
    from asft.training.safelora import lora_modules

    state = load_file(adapter / ADAPTER_FILE)
    pairs = lora_modules(state)
    if sorted(pairs) != modules:
        odd = sorted(set(pairs) ^ set(modules))
        raise AsftError(f"aligned model {where}: the harmful tuning's LoRA modules and the direction's target modules "
                        f"differ ({odd[0]} and {len(odd) - 1} more); target linear layers only (--target-modules)")
    return {name: (state[a].float(), state[b].float()) for name, (a, b) in pairs.items()}


def _write(config: DirectionConfig, vectors: dict[str, torch.Tensor], path: Path) -> tuple[str, dict, dict]:
    """direction.safetensors (the extraction's writer and dtype); returns its hash and the diagnostics."""
    writer = StreamingSafetensorsWriter(path, {n: list(v.shape) for n, v in vectors.items()},
                                        getattr(torch, config.dtype), {"format": FORMAT})
    svd_names = spread_modules(list(vectors), config.svd_modules) if config.svd_modules else set()
    singular, method = {}, {}
    for name, v in vectors.items():
        writer.add(name, v)
        if name in svd_names:
            singular[name], method[name] = top_singular_values(v, config.top_singular)
    return writer.close(), singular, method


def _tuning_record(tuning, summary: dict, trained: dict) -> dict:
    """What the harmful tuning was, enough to run it again (``tuning_config`` plus these fields)."""
    return {"trainer": "asft train --method sft (LoRA)", "steps": summary["steps"], "lr": tuning.lr,
            "lr_schedule": "constant", "seed": tuning.seed, "preset": tuning.preset, "batch_size": tuning.batch_size,
            "max_length": tuning.max_length, "lora_r": tuning.lora_r, "lora_alpha": tuning.lora_alpha,
            "lora_dropout": tuning.lora_dropout, "template": trained["template"], "final_loss": summary["final_loss"],
            "precision": trained["precision"], "device": trained["device"]}


def learn_direction(config: DirectionConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Tune the aligned model on ``config.harmful_data``, write V = W_aligned - W_harmful; returns the manifest."""
    from asft.training import train

    storage.check_output(config.out, "direction", inputs=(config.aligned, config.harmful_data))
    storage.list_files(config.harmful_data)  # a missing harmful set fails before anything loads
    started = time.perf_counter()
    folder = resolve_checkpoint(config.aligned, "aligned model")
    targets, files, modules = aligned_targets(config, folder)
    stored = stored_tensors(files, modules, f"aligned model {config.aligned}")
    check_matrices(stored, targets)
    layout = checkpoint_layout(folder, modules)
    with tempfile.TemporaryDirectory(prefix="asft-harmful-tuning-") as tmp:
        tuning = tuning_config(config, str(Path(tmp) / "adapter"))
        if progress:
            progress(f"direction: tuning {config.aligned} on {config.harmful_data} for {config.harmful_steps} steps")
        summary = train(tuning)
        factors = _update_factors(Path(tmp) / "adapter", modules, config.aligned)
        trained = storage.read_json(Path(tmp) / "adapter" / "train_manifest.json")
    scaling = tuning.lora_alpha / tuning.lora_r
    vectors = {name: -scaling * (B @ A) for name, (A, B) in factors.items()}  # (out, in), peft's layout for Conv1D too
    aligned = _aligned_record(config, folder, stored, modules)
    with storage.staged_dir(config.out, "direction") as tmp:
        direction_sha256, singular, method = _write(config, vectors, tmp / DIRECTION_FILE)
        manifest = {
            "format": FORMAT, "source": SOURCE, "aligned": aligned,
            "harmful_data": {"uri": config.harmful_data, "sha256": trained["data_sha256"], "rows": trained["examples"]},
            "harmful_tuning": _tuning_record(tuning, summary, trained),
            **targets.record(),
            "dtype": config.dtype, "direction_file": DIRECTION_FILE, "direction_sha256": direction_sha256,
            "modules": modules,
            "shapes": {name: list(v.shape) for name, v in vectors.items()},
            "ranks": {name: update_rank(*factors[name]) for name in modules},
            **layout.record(),
            "frobenius_norms": {name: torch.linalg.matrix_norm(v).item() for name, v in vectors.items()},
            "top_singular_values": singular, "singular_values_method": method,
            "seconds": round(time.perf_counter() - started, 3),
        }
        storage.write_json(tmp / MANIFEST_FILE, manifest)
    return manifest
