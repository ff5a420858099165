"""The safetensors format: where each tensor's bytes lie, from the headers and the shard index alone."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from asft.errors import AsftError

SHARD_INDEX = "model.safetensors.index.json"
FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}  # stored name -> torch dtype
DTYPE_NAMES = {dtype: name for name, dtype in FLOAT_DTYPES.items()}


@dataclass(frozen=True)
class StoredTensor:
    """Where a tensor's bytes lie in a safetensors file (absolute byte range) and how they are laid out."""

    path: Path
    dtype: str
    shape: list[int]
    start: int
    end: int


def safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors of a safetensors file, from its header alone: an 8-byte little-endian length,
    then JSON giving each tensor's dtype, shape and data_offsets counted from the header's end."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > size - 8:
                raise ValueError(f"header length {length} exceeds the file's {size} bytes")
            header = json.loads(fh.read(length))
        header.pop("__metadata__", None)
        tensors = {key: StoredTensor(path, info["dtype"], list(info["shape"]), 8 + length + info["data_offsets"][0],
                                     8 + length + info["data_offsets"][1]) for key, info in header.items()}
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise AsftError(f"{path}: not a valid safetensors file ({type(exc).__name__}: {exc}); "
                        "re-download or re-save the checkpoint") from None
    for key, t in tensors.items():
        if not t.start <= t.end <= size:
            raise AsftError(f"{path}: tensor {key} lies beyond the end of the file (truncated download or copy?); "
                            "re-download or re-save it")
    return tensors


def tensor_files(folder: Path, what: str) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (from the shard index, else the files)."""
    index = folder / SHARD_INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (folder / f).exists()})
        if missing:
            raise AsftError(f"{what} {folder}: shard {missing[0]} named in {index.name} is missing; re-download the checkpoint")
        return {key: folder / f for key, f in weight_map.items()}
    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        for key in safetensors_header(path):
            if key in files:
                raise AsftError(f"{what} {folder}: tensor {key} is in both {files[key].name} and {path.name}; "
                                f"remove the stray file or add {SHARD_INDEX}")
            files[key] = path
    return files


def read_tensor(path: Path, key: str) -> torch.Tensor:
    # open/close per tensor: the mapping is released, so touched pages leave RSS at once
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return fh.get_tensor(key)
