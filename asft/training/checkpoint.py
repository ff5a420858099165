"""Resumable training checkpoints without pickle.

A checkpoint is a folder ``step-00000040/`` under the checkpoint location holding
``adapter.safetensors`` (trainable weights by name), ``optimizer.safetensors`` (AdamW
moments and step counters, keyed ``<param name>/<state key>``), ``rng.safetensors`` (torch
RNG states as uint8 tensors) and ``checkpoint_manifest.json`` (position in the schedule,
optimizer hyper-parameters, grad-scaler state, the config it belongs to, metrics so far).
The manifest is written last, so a folder without it is never taken for a checkpoint.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from asft import storage
from asft.errors import AsftError

MANIFEST = "checkpoint_manifest.json"
KIND = "checkpoints"


def _folder(root: str, step: int) -> str:
    return storage.join(root, f"step-{step:08d}")


def prepare(root: str, inputs=()) -> None:
    """Check the checkpoint location before training and mark it as asft's (so a later
    resume, and the clean-up after training, never touch a folder asft did not write)."""
    storage.check_output(root, KIND, inputs=inputs)
    if storage.output_kind(root) is None:
        storage.mark_output(root, KIND)


def remove_all(root: str) -> None:
    """Delete the checkpoint location, which :func:`prepare` marked as asft's."""
    if storage.output_kind(root) == (KIND, True):
        fs, path = storage.filesystem(root)
        fs.rm(path, recursive=True)


def list_checkpoints(root: str) -> list[int]:
    """Steps of the complete checkpoints under ``root``, oldest first."""
    if not storage.exists(root):
        return []
    fs, path = storage.filesystem(root)
    steps = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("step-") and name[5:].isdigit() and storage.exists(storage.join(root, name, MANIFEST)):
            steps.append(int(name[5:]))
    return sorted(steps)


def save_checkpoint(root: str, step: int, named_params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, state: dict, keep: int) -> str:
    """Write one checkpoint atomically, then drop all but the ``keep`` most recent ones."""
    index = {id(p): name for name, p in named_params.items()}
    moments = {f"{index[id(p)]}/{key}": value.detach().cpu().contiguous()
               for p, per_param in optimizer.state.items() for key, value in per_param.items()}
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    folder = _folder(root, step)
    with storage.staged_dir(folder, "checkpoint") as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in named_params.items()}, tmp / "adapter.safetensors")
        save_file(moments, tmp / "optimizer.safetensors")
        save_file(rng, tmp / "rng.safetensors")
        storage.write_json(tmp / MANIFEST, {**state, "step": step, "param_groups": groups})
    fs, _ = storage.filesystem(root)
    for old in list_checkpoints(root)[:-keep]:
        fs.rm(storage.filesystem(_folder(root, old))[1], recursive=True)
    return folder


def load_checkpoint(root: str, step: int, named_params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and RNG from a checkpoint; returns its manifest."""
    folder = _folder(root, step)
    state = storage.read_json(storage.join(folder, MANIFEST))
    weights = load_safetensors(storage.read_bytes(storage.join(folder, "adapter.safetensors")))
    if sorted(weights) != sorted(named_params):
        raise AsftError(f"checkpoint {folder} holds other trainable weights than this run; "
                        "resume with the same model and LoRA settings, or remove the checkpoint folder")
    with torch.no_grad():
        for name, param in named_params.items():
            param.copy_(weights[name])
    moments = load_safetensors(storage.read_bytes(storage.join(folder, "optimizer.safetensors")))
    names = list(named_params)
    per_param: dict[int, dict] = {}
    for key, value in moments.items():
        name, _, field = key.rpartition("/")
        per_param.setdefault(names.index(name), {})[field] = value
    groups = [{**group, "params": list(range(len(names)))} for group in state["param_groups"]]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    rng = load_safetensors(storage.read_bytes(storage.join(folder, "rng.safetensors")))
    torch.set_rng_state(rng["cpu"])
    cuda_states = [rng[f"cuda{i}"] for i in range(len(rng) - 1)]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return state


def describe_mismatch(saved: dict, current: dict) -> str:
    """The first config field that differs, for the resume error message."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            return f"{key}: checkpoint {json.dumps(saved.get(key), default=str)}, now {json.dumps(current.get(key), default=str)}"
    return ""

