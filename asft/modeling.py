"""Loading checkpoints and tokenizers safely.

Checkpoints are Hugging Face folders in safetensors; pickle formats are refused, nothing is
downloaded from a hub, and ``trust_remote_code`` stays off unless the caller turns it on.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from asft.errors import AsftError, first_line
from asft.io.safetensors import safetensors_header
from asft.storage import materialize

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def resolve_checkpoint(uri: str | os.PathLike, what: str = "model") -> Path:
    """A local folder holding a safetensors checkpoint, or a clear error."""
    folder = materialize(uri)
    if not folder.is_dir():
        raise AsftError(f"{what} {uri}: not a folder; give a Hugging Face checkpoint folder")
    if not (folder / "config.json").exists():
        raise AsftError(f"{what} {uri}: no config.json; give a Hugging Face checkpoint folder")
    if not list(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise AsftError(
                f"{what} {uri}: weights are in pickle format ({pickled[0]}), which asft never loads; "
                "convert them to safetensors (model.save_pretrained(dir, safe_serialization=True))"
            )
        raise AsftError(f"{what} {uri}: no *.safetensors weights found")
    for weights in folder.glob("*.safetensors"):  # headers only: a cut file fails here, not deep in a loader
        safetensors_header(weights)
    return folder


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise AsftError(f"--device {device}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise AsftError(f"--device {device}: no CUDA GPU is available here; use --device cpu or auto")
    return chosen


def load_causal_lm(uri: str | os.PathLike, *, dtype: torch.dtype | str = "float32",
                   device: str = "auto", trust_remote_code: bool = False, quantization=None):
    """``quantization``: a transformers ``BitsAndBytesConfig``; the weights are then quantized
    while loading, straight onto ``device`` (a quantized model cannot be moved afterwards)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    folder = resolve_checkpoint(uri)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    target = pick_device(device)
    placement = {}
    if quantization is not None:  # bitsandbytes places the weights itself, on one CUDA device
        index = torch.cuda.current_device() if target.index is None else target.index
        placement = {"quantization_config": quantization, "device_map": {"": index}}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=True, use_safetensors=True,
            trust_remote_code=trust_remote_code, **placement,
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise AsftError(
                f"model {uri}: needs custom code from the checkpoint; pass --trust-remote-code "
                "only if you trust its authors"
            ) from None
        raise AsftError(f"model {uri}: cannot load: {first_line(exc)}") from None
    except (OSError, RuntimeError, KeyError, TypeError, SafetensorError) as exc:  # a corrupt config or weights
        raise AsftError(f"model {uri}: cannot load ({type(exc).__name__}: {first_line(exc)}); "
                        "re-download or re-save the checkpoint (save_pretrained, safe_serialization=True)") from None
    return (model if quantization is not None else model.to(target)).eval()


def load_tokenizer(uri: str | os.PathLike, *, trust_remote_code: bool = False, padding_side: str = "left"):
    from transformers import AutoTokenizer

    folder = materialize(uri)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise AsftError(f"tokenizer {uri}: cannot load: {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer
