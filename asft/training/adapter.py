"""The adapter folder a training writes: its file names, its manifest's headline, reuse of a
complete one, and Safe LoRA's projection of a saved adapter (in place or into a new folder)."""

from __future__ import annotations

import time
from pathlib import Path

from asft import storage
from asft.errors import AsftError
from asft.training.config import TrainConfig

ADAPTER_FILE = "adapter_model.safetensors"
MANIFEST = "train_manifest.json"


def headline(manifest: dict) -> dict:
    """The figures of a training manifest that its summary shows."""
    keys = ("method", "final_loss", "final_penalty", "steps", "epochs_done", "wall_seconds", "tokens_per_second",
            "direction_sha256", "resumed_from_step")
    summary = {k: manifest[k] for k in keys if k in manifest}
    if "safelora" in manifest:
        summary["safelora_projected"] = len(manifest["safelora"]["projected"])
        summary["safelora_threshold"] = manifest["safelora"]["threshold"]
    return summary


def previous_result(config: TrainConfig) -> dict | None:
    """The summary of a complete adapter at ``config.out`` trained with exactly this config, else None."""
    if not storage.is_complete(config.out, "adapter"):
        return None
    manifest = storage.read_json(storage.join(config.out, MANIFEST))
    return {"adapter": config.out, **headline(manifest)} if manifest.get("config") == config.model_dump(mode="json") else None


def project_adapter_file(path: Path, config: TrainConfig) -> dict:
    """Safe LoRA on a saved adapter file, in place; returns the report and the direction's hash."""
    from safetensors.torch import load_file, save_file

    from asft.direction import load_direction
    from asft.training import safelora

    direction = load_direction(config.direction)
    state = load_file(path)
    blocks = (direction.qv_row_blocks(sorted(safelora.lora_modules(state)), config.direction)
              if config.fused_qkv_anchor == "qv" else None)
    projected, report = safelora.project(state, direction.vectors, mode=config.safelora_mode,
                                         tau=config.safelora_tau, k=config.safelora_k, row_blocks=blocks)
    save_file(projected, path, metadata={"format": "pt"})
    return {**report, "direction_sha256": direction.sha256}


def project_existing(config: TrainConfig, started: float) -> dict:
    """method safelora with --adapter: copy the adapter folder, projecting its weights; returns the manifest."""
    import shutil

    from asft.io.safetensors import safetensors_header

    source = storage.materialize(config.adapter)
    if not (source / ADAPTER_FILE).exists():
        raise AsftError(f"adapter {config.adapter}: no {ADAPTER_FILE}; give a PEFT adapter folder saved with safetensors")
    safetensors_header(source / ADAPTER_FILE)  # a cut file fails with its name
    with storage.staged_dir(config.out, "adapter") as tmp:
        for file in source.iterdir():
            if file.is_file() and file.name != MANIFEST:
                shutil.copy(file, tmp / file.name)
        report = project_adapter_file(tmp / ADAPTER_FILE, config)
        manifest = {"method": "safelora", "config": config.model_dump(mode="json"),
                    "source_adapter_sha256": storage.sha256_file(source / ADAPTER_FILE),
                    "direction_sha256": report.pop("direction_sha256"), "safelora": report,
                    "wall_seconds": round(time.perf_counter() - started, 3)}
        storage.write_json(tmp / MANIFEST, manifest)
    return manifest
