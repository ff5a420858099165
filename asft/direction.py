"""The alignment direction: ``V = W_aligned - W_base`` per target module, streamed.

Neither model is ever loaded: tensors are read one module at a time from the safetensors
shards (single file or ``model.safetensors.index.json``) and V is written straight into the
output file, so peak memory is about two tensors whatever the model size. Modules are
paired by NAME and only 2-D weights are kept (the reference pairs by position, which breaks
on models with q/k/v biases such as Qwen2).

Output folder: ``direction.safetensors`` (one V per module, keyed by module name, e.g.
``model.layers.0.self_attn.q_proj``) and ``manifest.json`` (inputs with content hashes,
modules, shapes, norms, a few singular values, timing, memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from asft import storage
from asft.errors import AsftError
from asft.modeling import resolve_checkpoint

DIRECTION_FILE = "direction.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "asft-direction/1"
StoredDtype = Literal["float32", "bfloat16", "float16"]
_EXACT_SVD_MAX = 256
_SAFETENSORS_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


class DirectionConfig(BaseModel):
    """Extract the alignment direction from an aligned/base checkpoint pair."""

    model_config = ConfigDict(extra="forbid")

    aligned: str = Field(description="Aligned (chat) checkpoint: HF folder with safetensors, local path or URI")
    base: str = Field(description="Base checkpoint the aligned model was trained from: local path or URI")
    out: str = Field(description="Output folder (local path or URI) for direction.safetensors and manifest.json")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Module names matched as suffixes (q_proj matches model.layers.3.self_attn.q_proj)")
    target_regex: str | None = Field(
        None, description="Regular expression that the full module name must match; replaces target_modules")
    dtype: StoredDtype = Field("float32", description="Stored dtype of V (computed in float32 in any case)")
    svd_modules: int = Field(3, ge=0, le=64, description="How many modules (first, middle, last) get singular values in the manifest")
    top_singular: int = Field(8, ge=1, le=256, description="How many of the largest singular values to report per such module")

    @model_validator(mode="after")
    def _check_targets(self) -> "DirectionConfig":
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
            except re.error as exc:
                raise ValueError(f"target_regex {self.target_regex!r} is not a valid regular expression: {exc}") from None
        elif not self.target_modules or not all(t.strip() for t in self.target_modules):
            raise ValueError("target_modules is empty; give module names such as q_proj,v_proj")
        return self


def module_matches(name: str, targets: list[str], regex: str | None = None) -> bool:
    """peft's rule: a full-match regex, or a name equal to / ending in ``.<target>``."""
    if regex is not None:
        return re.fullmatch(regex, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def checkpoint_sha256(folder: str | os.PathLike) -> str:
    """Content hash of a checkpoint's weights (all its *.safetensors files, names included)."""
    return storage.sha256_tree(folder, "*.safetensors")


def tensor_files(folder: Path, what: str) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (from the shard index, else the files)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (folder / f).exists()})
        if missing:
            raise AsftError(f"{what} {folder}: shard {missing[0]} named in {index.name} is missing; re-download the checkpoint")
        return {key: folder / f for key, f in weight_map.items()}
    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as fh:
            for key in fh.keys():
                if key in files:
                    raise AsftError(f"{what} {folder}: tensor {key} is in both {files[key].name} and {path.name}; "
                                    "remove the stray file or add model.safetensors.index.json")
                files[key] = path
    return files


def _shape(path: Path, key: str) -> list[int]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return list(fh.get_slice(key).get_shape())


def read_tensor(path: Path, key: str) -> torch.Tensor:
    # open/close per tensor: the mapping is released, so touched pages leave RSS at once
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return fh.get_tensor(key)


def top_singular_values(v: torch.Tensor, k: int) -> tuple[list[float], str]:
    """The k largest singular values: exact for small matrices; randomized (svd_lowrank, k + 16
    columns, 8 power iterations) for large ones, where exact SVD takes a minute per 2048^2
    matrix on a CPU. The leading values are accurate; a flat tail can be a few % low."""
    if min(v.shape) <= _EXACT_SVD_MAX:
        return torch.linalg.svdvals(v)[:k].tolist(), "exact"
    return torch.svd_lowrank(v, q=min(k + 16, min(v.shape)), niter=8)[1][:k].tolist(), "randomized"


def _model_type(folder: Path) -> str | None:
    return json.loads((folder / "config.json").read_text()).get("model_type")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def select_modules(files: dict[str, Path], targets: list[str], regex: str | None) -> list[str]:
    """Module names (tensor key minus ``.weight``) that match the targets; biases never do."""
    return sorted(key[: -len(".weight")] for key in files
                  if key.endswith(".weight") and module_matches(key[: -len(".weight")], targets, regex))


def _plan(config: DirectionConfig, aligned: Path, base: Path) -> tuple[list[str], dict, dict, dict[str, list[int]]]:
    """Module list, both file maps and shapes, after every consistency check."""
    a_type, b_type = _model_type(aligned), _model_type(base)
    if a_type != b_type:
        raise AsftError(f"architectures differ: aligned {config.aligned} is {a_type!r}, base {config.base} is {b_type!r}; "
                        "give the base model the aligned one was trained from")
    a_files, b_files = tensor_files(aligned, "aligned model"), tensor_files(base, "base model")
    a_mods = select_modules(a_files, config.target_modules, config.target_regex)
    b_mods = select_modules(b_files, config.target_modules, config.target_regex)
    pattern = f"regex {config.target_regex!r}" if config.target_regex else f"target modules {','.join(config.target_modules)}"
    if not a_mods:
        raise AsftError(f"{pattern} match no weight in aligned model {config.aligned}; "
                        "check the names (e.g. q_proj,v_proj for Llama) or the regex")
    for side, mods, other, where in (("base", a_mods, set(b_mods), config.base),
                                     ("aligned", b_mods, set(a_mods), config.aligned)):
        missing = [m for m in mods if m not in other]
        if missing:
            raise AsftError(f"module {missing[0]} (and {len(missing) - 1} more) missing from the {side} model {where}; "
                            "the checkpoints must have the same architecture and module names")
    shapes = {}
    for name in a_mods:
        key = name + ".weight"
        a_shape, b_shape = _shape(a_files[key], key), _shape(b_files[key], key)
        if a_shape != b_shape:
            raise AsftError(f"shapes differ for {name}: aligned {a_shape}, base {b_shape}; "
                            "the checkpoints must have the same architecture")
        if len(a_shape) != 2:
            raise AsftError(f"{pattern} match {key} of shape {a_shape}, not a matrix; target linear layers only")
        shapes[name] = a_shape
    return a_mods, a_files, b_files, shapes


class _StreamingSafetensors:
    """Write a safetensors file tensor by tensor (the header is known from the shapes up
    front), hashing the bytes on the way."""

    def __init__(self, path: Path, shapes: dict[str, list[int]], dtype: torch.dtype, metadata: dict[str, str]):
        itemsize = torch.empty((), dtype=dtype).element_size()
        header: dict = {"__metadata__": metadata}
        offset = 0
        for name, shape in shapes.items():
            size = itemsize * shape[0] * shape[1]
            header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
        self.order, self.dtype, self.digest = list(shapes), dtype, hashlib.sha256()
        self.fh = open(path, "wb")
        self._write(struct.pack("<Q", len(blob)) + blob)

    def _write(self, data) -> None:
        self.digest.update(data)
        self.fh.write(data)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        assert name == self.order.pop(0), "tensors must be added in header order"
        self._write(memoryview(tensor.to(self.dtype).contiguous().view(torch.uint8).numpy()))

    def close(self) -> str:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return self.digest.hexdigest()


def extract_direction(config: DirectionConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Compute and write the direction; returns the manifest (also written as manifest.json)."""
    started, rss_start = time.perf_counter(), _rss_mb()
    aligned = resolve_checkpoint(config.aligned, "aligned model")
    base = resolve_checkpoint(config.base, "base model")
    modules, a_files, b_files, shapes = _plan(config, aligned, base)
    dtype = getattr(torch, config.dtype)
    picks = sorted({round(i * (len(modules) - 1) / max(config.svd_modules - 1, 1))
                    for i in range(config.svd_modules)}) if config.svd_modules else []
    svd_names = {modules[i] for i in picks}
    norms, singular, svd_method, rss_max = {}, {}, {}, rss_start
    with storage.staged_dir(config.out) as tmp:
        writer = _StreamingSafetensors(tmp / DIRECTION_FILE, shapes, dtype, {"format": FORMAT})
        try:
            for i, name in enumerate(modules):
                key = name + ".weight"
                v = read_tensor(a_files[key], key).to(torch.float32)
                v.sub_(read_tensor(b_files[key], key).to(torch.float32))
                rss_max = max(rss_max, _rss_mb())
                norms[name] = torch.linalg.matrix_norm(v).item()
                if name in svd_names:
                    singular[name], svd_method[name] = top_singular_values(v, config.top_singular)
                writer.add(name, v)
                del v
                if progress and (i + 1) % max(len(modules) // 10, 1) == 0:
                    progress(f"direction: {i + 1}/{len(modules)} modules")
        finally:
            digest = writer.close()
        manifest = {
            "format": FORMAT,
            "aligned": {"uri": config.aligned, "model_type": _model_type(aligned), "sha256": checkpoint_sha256(aligned)},
            "base": {"uri": config.base, "model_type": _model_type(base), "sha256": checkpoint_sha256(base)},
            "target_modules": None if config.target_regex else config.target_modules,
            "target_regex": config.target_regex,
            "dtype": config.dtype,
            "direction_file": DIRECTION_FILE,
            "direction_sha256": digest,
            "modules": modules,
            "shapes": shapes,
            "frobenius_norms": norms,
            "top_singular_values": singular,
            "singular_values_method": svd_method,
            "seconds": round(time.perf_counter() - started, 3),
            "rss_start_mb": round(rss_start, 1),
            "rss_growth_mb": round(rss_max - rss_start, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "largest_tensor_mb": round(max(s[0] * s[1] for s in shapes.values()) * 4 / 2**20, 3),
        }
        storage.write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


@dataclass
class Direction:
    """A loaded direction: V per module (on the requested device/dtype), float32 norms of the
    loaded V, the content hash of direction.safetensors and the manifest."""

    vectors: dict[str, torch.Tensor]
    norms: dict[str, float]
    sha256: str
    manifest: dict


def direction_sha256(uri: str | os.PathLike) -> str:
    """The content hash recorded for a direction folder (what training manifests cite)."""
    return storage.read_json(storage.join(uri, MANIFEST_FILE))["direction_sha256"]


def load_direction(uri: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   modules: list[str] | None = None) -> Direction:
    """V per module from a direction folder, checked against its manifest's hash.

    ``modules`` loads only those (error if one is absent); tensors go to ``device`` one by one.
    """
    from safetensors import safe_open

    manifest_uri = storage.join(uri, MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise AsftError(f"direction {uri}: no {MANIFEST_FILE}; give a folder written by `asft direction`")
    manifest = storage.read_json(manifest_uri)
    if manifest.get("format") != FORMAT:
        raise AsftError(f"direction {uri}: format {manifest.get('format')!r}, expected {FORMAT}; re-run `asft direction`")
    path = storage.materialize(storage.join(uri, DIRECTION_FILE))
    digest = storage.sha256_file(path)
    if digest != manifest["direction_sha256"]:
        raise AsftError(f"direction {uri}: {DIRECTION_FILE} does not match the hash in {MANIFEST_FILE} "
                        "(corrupt or stale cached copy); re-run `asft direction` or clear ASFT_CACHE_DIR")
    wanted = manifest["modules"] if modules is None else modules
    absent = [m for m in wanted if m not in manifest["shapes"]]
    if absent:
        raise AsftError(f"direction {uri} has no module {absent[0]} ({len(absent)} missing); "
                        f"it holds {len(manifest['modules'])} modules such as {manifest['modules'][0]}; "
                        "extract a direction for the same target modules")
    vectors, norms = {}, {}
    with safe_open(path, framework="pt", device=str(device)) as fh:
        for name in wanted:
            vectors[name] = fh.get_tensor(name).to(dtype)
            norms[name] = torch.linalg.matrix_norm(vectors[name].float()).item()
    return Direction(vectors=vectors, norms=norms, sha256=digest, manifest=manifest)
