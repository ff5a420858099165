"""The alignment direction: ``V = W_aligned - W_base`` per target module, streamed.

Neither model is ever loaded: the safetensors headers (single file or
``model.safetensors.index.json`` shards) say where each target tensor's bytes lie; they are
read one module at a time with plain positioned reads into two reused buffers, V is computed
in place and streamed into the output file, so peak memory is about two tensors whatever the
model size. Modules are paired by NAME and only 2-D weights are kept (the reference pairs by
position, which breaks on models with q/k/v biases such as Qwen2).

Hashing runs on worker threads beside the streaming (hashlib releases the GIL): the sha256 of
the target tensors' stored bytes per input (``tensors_sha256``: what V was computed from), of
the output, and, unless the caller already has them (the pipeline's fingerprint step), of
both whole checkpoints. The reading, writing and hashing machinery is :mod:`asft.io`.

Targets default to the model type's preset (:mod:`asft.architectures`). V is always stored in
nn.Linear's (out, in) layout: weights that the checkpoint stores as (in, out) (transformers'
Conv1D, GPT-2 family) are transposed, and the manifest lists them (``transposed_modules``).

Output folder: ``direction.safetensors`` (one V per module, keyed by module name, e.g.
``model.layers.0.self_attn.q_proj``) and ``manifest.json`` (inputs with content hashes,
targets and the preset that chose them, modules, shapes, layout, fused q/k/v rows, norms,
a few singular values, timing, memory; ``source``: ``base`` here).

Without a base (``harmful_data`` instead: the AsFT paper's AsFTAlt) the direction is learned
from a small harmful set (:mod:`asft.harmful_direction`) and written in the same folder format.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from asft import storage
from asft.architectures import (
    CheckpointLayout,
    QkvLayout,
    Targets,
    checkpoint_layout,
    check_target_fields,
    checkpoint_weights,
    model_type,
    module_matches,
    resolve_targets,
)
from asft.errors import AsftError
from asft.io.hashing import checkpoint_sha256
from asft.io.memory import peak_rss_mb, rss_mb
from asft.io.safetensors import (
    FLOAT_DTYPES,
    StoredTensor,
    safetensors_header,
    tensor_files,
)
from asft.io.streaming import StreamingSafetensorsWriter, TensorReader
from asft.modeling import resolve_checkpoint
from asft.regularizer import low_rank_factor

DIRECTION_FILE = "direction.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "asft-direction/1"
StoredDtype = Literal["float32", "bfloat16", "float16"]
_EXACT_SVD_MAX = 256


@dataclass
class _Plan:
    """The modules, where each side's weights lie, what chose the modules, and their layout."""

    modules: list[str]
    aligned: dict[str, StoredTensor]
    base: dict[str, StoredTensor]
    targets: Targets
    layout: CheckpointLayout

    def shape(self, name: str) -> list[int]:
        """V's shape, in (out, in) layout."""
        shape = self.aligned[name].shape
        return shape[::-1] if name in self.layout.transposed else shape


class DirectionConfig(BaseModel):
    """Extract the alignment direction from an aligned/base checkpoint pair, or learn it from a
    small harmful set when the aligned model ships without its base (AsFTAlt)."""

    model_config = ConfigDict(extra="forbid")

    aligned: str = Field(description="Aligned (chat) checkpoint: HF folder with safetensors, local path or URI")
    base: str | None = Field(None, description="Base checkpoint the aligned model was trained from: local path or URI "
                             "(give base or harmful_data)")
    harmful_data: str | None = Field(
        None, description="No base: harmful prompts with compliant answers (any format `asft train` reads); the "
        "aligned model is LoRA-tuned on them into W_harmful and V = W_aligned - W_harmful (AsFTAlt)")
    harmful_steps: int = Field(100, ge=1, le=1000, description="harmful_data: optimizer steps of the harmful tuning")
    harmful_lr: float | None = Field(None, gt=0, le=1.0, description="harmful_data: learning rate (constant); "
                                     "unset: the harmful_preset's")
    harmful_seed: int = Field(42, ge=0, description="harmful_data: seed of the LoRA init, dropout and shuffle")
    harmful_lora_r: int = Field(8, ge=1, le=1024, description="harmful_data: LoRA rank, the rank of each V")
    harmful_preset: Literal["paper", "sandbox"] = Field(
        "paper", description="harmful_data: the training preset for batch size, max length and an unset lr")
    out: str = Field(description="Output folder (local path or URI) for direction.safetensors and manifest.json")
    target_modules: list[str] | None = Field(
        None, description="Module names matched as suffixes (q_proj matches model.layers.3.self_attn.q_proj); "
        "unset: the model type's preset, the attention query and value (q_proj,v_proj; qkv_proj for Phi-3; "
        "query_key_value for GPT-NeoX, Falcon, Bloom; c_attn for GPT-2)")
    target_regex: str | None = Field(
        None, description="Regular expression that the full module name must match; replaces target_modules")
    dtype: StoredDtype = Field("float32", description="Stored dtype of V (computed in float32 in any case)")
    svd_modules: int = Field(3, ge=0, le=64, description="How many modules (first, middle, last) get singular values in the manifest")
    top_singular: int = Field(8, ge=1, le=256, description="How many of the largest singular values to report per such module")
    aligned_sha256: str | None = Field(
        None, description="checkpoint_sha256 of the aligned checkpoint if already known (recorded as given, not recomputed)")
    base_sha256: str | None = Field(
        None, description="checkpoint_sha256 of the base checkpoint if already known (recorded as given, not recomputed)")

    @field_validator("aligned_sha256", "base_sha256")
    @classmethod
    def _check_sha256(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(f"{value!r} is not a sha256 (64 hexadecimal characters); "
                             "give the checkpoint hash asft computed, or leave it out to compute it")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _check_targets(self) -> DirectionConfig:
        check_target_fields(self.target_modules, self.target_regex)
        return self

    @model_validator(mode="after")
    def _check_source(self) -> DirectionConfig:
        if (self.base is None) == (self.harmful_data is None):
            raise ValueError("give exactly one of base (the checkpoint the aligned model was trained from) and "
                             "harmful_data (a small harmful set to learn the direction from when there is no base)")
        # settings at their defaults pass (the pipeline sends every field); a changed one would be ignored
        unused = sorted(name for name, info in type(self).model_fields.items() if self.base is not None
                        and name.startswith("harmful_") and name != "harmful_data" and getattr(self, name) != info.default)
        unused += ["base_sha256"] if self.harmful_data is not None and self.base_sha256 is not None else []
        if unused:
            raise ValueError(f"{unused[0]} has no effect with {'base' if self.base else 'harmful_data'}; drop it")
        return self


def top_singular_values(v: torch.Tensor, k: int) -> tuple[list[float], str]:
    """The k largest singular values: exact for small matrices; for large ones the column norms
    of ``low_rank_factor`` (U_k S_k; k + 8 columns, 2 power iterations, seeded: manifests repeat
    and the caller's RNG is untouched). A diagnostic: milliseconds instead of a minute for an
    exact SVD of a 2048^2 matrix on a CPU; on 1024^2 matrices the top 8 came within 0.12 % of
    exact for a 1/i spectrum and up to 9 % low for a flat (Gaussian) one, which still reads as flat."""
    if min(v.shape) <= _EXACT_SVD_MAX:
        return torch.linalg.svdvals(v)[:k].tolist(), "exact"
    factor = low_rank_factor(v, k, oversample=8, power_iterations=2)
    return torch.linalg.vector_norm(factor, dim=0).tolist(), "randomized"


def select_modules(files: dict[str, Path], targets: list[str] | tuple[str, ...], regex: str | None) -> list[str]:
    """Module names (tensor key minus ``.weight``) that match the targets; biases never do."""
    return sorted(key[: -len(".weight")] for key in files
                  if key.endswith(".weight") and module_matches(key[: -len(".weight")], targets, regex))


def stored_tensors(files: dict[str, Path], modules: list[str], what: str) -> dict[str, StoredTensor]:
    """Module -> where its weight's bytes lie, checked: listed in its shard, a dtype V can be
    computed from, a byte length that matches the shape."""
    headers: dict[Path, dict[str, StoredTensor]] = {}
    stored = {}
    for name in modules:
        key, path = name + ".weight", files[name + ".weight"]
        if path not in headers:
            headers[path] = safetensors_header(path)
        t = headers[path].get(key)
        if t is None:
            raise AsftError(f"{what}: tensor {key} is listed for {path} but not in it; re-download the checkpoint")
        if t.dtype not in FLOAT_DTYPES:
            raise AsftError(f"{what}: tensor {key} in {path} is stored as {t.dtype}; the direction is computed from "
                            f"{', '.join(FLOAT_DTYPES)} weights: re-save the checkpoint in float32 or bfloat16")
        needed = FLOAT_DTYPES[t.dtype].itemsize * torch.Size(t.shape).numel()
        if t.end - t.start != needed:
            raise AsftError(f"{what}: tensor {key} in {path} holds {t.end - t.start} bytes, not the {needed} "
                            f"its shape {t.shape} needs; re-download the checkpoint")
        stored[name] = t
    return stored


def aligned_targets(config: DirectionConfig, aligned: Path) -> tuple[Targets, dict[str, Path], list[str]]:
    """The targets on the aligned checkpoint, its tensor files and the target modules in them."""
    targets = resolve_targets(model_type(aligned), config.target_modules, config.target_regex,
                              checkpoint_weights(aligned, "aligned model"), f"aligned model {config.aligned}")
    files = tensor_files(aligned, "aligned model")
    return targets, files, select_modules(files, targets.modules or (), targets.regex)


def check_matrices(stored: dict[str, StoredTensor], targets: Targets) -> None:
    """Only 2-D weights have a direction: a target matching a norm's 1-D weight is refused."""
    for name, t in stored.items():
        if len(t.shape) != 2:
            raise AsftError(f"{targets.describe()} match {name}.weight of shape {t.shape}, not a matrix; "
                            "target linear layers only")


def _plan(config: DirectionConfig, aligned: Path, base: Path) -> _Plan:
    """Module list and where each side's weights lie, after every consistency check."""
    a_type, b_type = model_type(aligned), model_type(base)
    if a_type != b_type:
        raise AsftError(f"architectures differ: aligned {config.aligned} is {a_type!r}, base {config.base} is {b_type!r}; "
                        "give the base model the aligned one was trained from")
    targets, a_files, a_mods = aligned_targets(config, aligned)
    b_files = tensor_files(base, "base model")
    b_mods = select_modules(b_files, targets.modules or (), targets.regex)
    for side, mods, other, where in (("base", a_mods, set(b_mods), config.base),
                                     ("aligned", b_mods, set(a_mods), config.aligned)):
        missing = [m for m in mods if m not in other]
        if missing:
            raise AsftError(f"module {missing[0]} (and {len(missing) - 1} more) missing from the {side} model {where}; "
                            "the checkpoints must have the same architecture and module names")
    a_stored = stored_tensors(a_files, a_mods, f"aligned model {config.aligned}")
    b_stored = stored_tensors(b_files, a_mods, f"base model {config.base}")
    for name in a_mods:
        a_shape, b_shape = a_stored[name].shape, b_stored[name].shape
        if a_shape != b_shape:
            raise AsftError(f"shapes differ for {name}: aligned {a_shape}, base {b_shape}; "
                            "the checkpoints must have the same architecture")
    check_matrices(a_stored, targets)
    plan = _Plan(a_mods, a_stored, b_stored, targets, checkpoint_layout(aligned, a_mods))
    _check_fused_rows(plan, config.aligned)
    return plan


def _check_fused_rows(plan: _Plan, where: str) -> None:
    """The q/k/v row layout from config.json must tile each fused weight exactly."""
    for name in plan.modules:
        qkv = plan.layout.qkv.get(name.split(".")[-1])
        if qkv is not None and plan.shape(name)[0] != qkv.rows_total:
            raise AsftError(f"aligned model {where}: {name} has {plan.shape(name)[0]} output rows but its config.json "
                            f"head counts give {qkv.rows_total} ({qkv.record()}); the checkpoint and its config disagree")


class _Phases:
    """Main-thread seconds per phase; work on the hashing threads shows up as the waits for it."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started


def _input_record(uri: str, folder: Path, given: str | None, computed: Future | None, tensors_sha256: str) -> dict:
    return {"uri": uri, "model_type": model_type(folder), "sha256": given or computed.result(),
            "sha256_source": "given" if given else "computed", "tensors_sha256": tensors_sha256}


@dataclass
class _Streamed:
    """What streaming the modules produced: V's norms and diagnostics, and the content hashes."""

    norms: dict[str, float] = field(default_factory=dict)
    singular: dict[str, list[float]] = field(default_factory=dict)
    svd_method: dict[str, str] = field(default_factory=dict)
    rss_max: float = 0.0
    direction_sha256: str = ""
    tensors_sha256: dict[str, str] = field(default_factory=dict)


def spread_modules(modules: list[str], count: int) -> set[str]:
    """``count`` modules spread evenly from the first to the last."""
    picks = {round(i * (len(modules) - 1) / max(count - 1, 1)) for i in range(count)}
    return {modules[i] for i in picks}


def _stream(config: DirectionConfig, plan: _Plan, out: Path, phase: _Phases, rss_start: float,
            progress: Callable[[str], None] | None) -> _Streamed:
    """V = aligned - base module by module, into ``out``, through one reused buffer."""
    modules, a_stored, b_stored = plan.modules, plan.aligned, plan.base
    shapes = {name: a_stored[name].shape for name in modules}
    svd_names = spread_modules(modules, config.svd_modules) if config.svd_modules else set()
    v_buffer = torch.empty(max(torch.Size(s).numel() for s in shapes.values()), dtype=torch.float32)
    done, diagnostics = _Streamed(rss_max=rss_start), ThreadPoolExecutor(1, thread_name_prefix="asft-singular-values")
    a_reader, b_reader = TensorReader(), TensorReader()
    writer = StreamingSafetensorsWriter(out, {name: plan.shape(name) for name in modules}, getattr(torch, config.dtype),
                                        {"format": FORMAT})
    try:
        for i, name in enumerate(modules):
            v = v_buffer[: torch.Size(shapes[name]).numel()]
            with phase("read_subtract"):
                b_reader.subtract_from(b_stored[name], v, a_reader.copy_into(a_stored[name], v))
            v = v.view(shapes[name])
            with phase("norm"):
                done.norms[name] = torch.linalg.matrix_norm(v).item()
            done.rss_max = max(done.rss_max, rss_mb())
            # the diagnostic runs beside the write (both only read V)
            svd = diagnostics.submit(top_singular_values, v, config.top_singular) if name in svd_names else None
            with phase("write"):
                writer.add(name, v.T if name in plan.layout.transposed else v)  # (out, in) layout
            if svd is not None:
                with phase("singular_values"):
                    done.singular[name], done.svd_method[name] = svd.result()
            if progress and (i + 1) % max(len(modules) // 10, 1) == 0:
                progress(f"direction: {i + 1}/{len(modules)} modules")
    finally:
        with phase("finish"):
            done.direction_sha256 = writer.close()
            done.tensors_sha256 = {"aligned": a_reader.close(), "base": b_reader.close()}
        diagnostics.shutdown()
    return done


def _manifest(config: DirectionConfig, inputs: dict, plan: _Plan, done: _Streamed, phase: _Phases,
              started: float, rss_start: float) -> dict:
    modules = plan.modules
    shapes = {name: plan.shape(name) for name in modules}
    return {
        "format": FORMAT,
        "source": "base",
        **inputs,
        **plan.targets.record(),
        "dtype": config.dtype,
        "direction_file": DIRECTION_FILE,
        "direction_sha256": done.direction_sha256,
        "modules": modules,
        "shapes": shapes,
        **plan.layout.record(),
        "frobenius_norms": done.norms,
        "top_singular_values": done.singular,
        "singular_values_method": done.svd_method,
        "seconds": round(time.perf_counter() - started, 3),
        "seconds_by_phase": {k: round(v, 4) for k, v in phase.seconds.items()},
        "rss_start_mb": round(rss_start, 1),
        "rss_growth_mb": round(done.rss_max - rss_start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "largest_tensor_mb": round(max(s[0] * s[1] for s in shapes.values()) * 4 / 2**20, 3),
    }


def extract_direction(config: DirectionConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Compute and write the direction; returns the manifest (also written as manifest.json).

    The manifest records per input the whole-checkpoint ``sha256`` (``checkpoint_sha256``;
    computed here, on threads beside the streaming, unless the config gives it) and
    ``tensors_sha256``: the sha256 of the target tensors' bytes as stored, in module order.
    With ``harmful_data`` instead of a base, V is learned (:func:`asft.harmful_direction.learn_direction`).
    """
    if config.harmful_data is not None:
        from asft.harmful_direction import learn_direction

        return learn_direction(config, progress)
    storage.check_output(config.out, "direction", inputs=(config.aligned, config.base))
    started, rss_start, phase = time.perf_counter(), rss_mb(), _Phases()
    with phase("plan"):
        folders = {"aligned": resolve_checkpoint(config.aligned, "aligned model"),
                   "base": resolve_checkpoint(config.base, "base model")}
        plan = _plan(config, folders["aligned"], folders["base"])
    given = {"aligned": config.aligned_sha256, "base": config.base_sha256}
    hashing = ThreadPoolExecutor(2, thread_name_prefix="asft-checkpoint-sha256")
    checkpoint_hash = {side: None if given[side] else hashing.submit(checkpoint_sha256, folders[side])
                       for side in folders}
    try:
        with storage.staged_dir(config.out, "direction") as tmp:
            done = _stream(config, plan, tmp / DIRECTION_FILE, phase, rss_start, progress)
            with phase("wait_checkpoint_hash"):
                inputs = {side: _input_record(getattr(config, side), folders[side], given[side],
                                              checkpoint_hash[side], done.tensors_sha256[side]) for side in folders}
            manifest = _manifest(config, inputs, plan, done, phase, started, rss_start)
            storage.write_json(tmp / MANIFEST_FILE, manifest)
    finally:
        hashing.shutdown(wait=False, cancel_futures=True)
    return manifest


@dataclass
class Direction:
    """A loaded direction: V per module (on the requested device/dtype), float32 norms of the
    loaded V, the content hash of direction.safetensors and the manifest."""

    vectors: dict[str, torch.Tensor]
    norms: dict[str, float]
    sha256: str
    manifest: dict

    def check_orientation(self, name: str, stored_transposed: bool, where: str) -> None:
        """V is in (out, in) layout; a model that stores ``name`` as (in, out) (Conv1D) must
        meet a direction that knew it (directions before ``weight_layout`` did not)."""
        if "weight_layout" not in self.manifest:
            if stored_transposed:
                raise AsftError(f"direction {where}: {name} is stored transposed (Conv1D) in the model but the direction "
                                "predates asft's (out, in) layout; re-run `asft direction`")
            return
        if stored_transposed != (name in self.manifest["transposed_modules"]):
            raise AsftError(f"direction {where}: {name} is {'' if stored_transposed else 'not '}stored transposed in the "
                            "model but the direction says otherwise; use the direction built for this model family")

    def qkv_layout(self, name: str) -> QkvLayout | None:
        """The q/k/v rows of ``name`` when it is a fused q/k/v weight the direction knows the layout of."""
        record = (self.manifest.get("fused_qkv") or {}).get(name.split(".")[-1])
        return None if record is None else QkvLayout(**record)

    def qv_row_blocks(self, modules: list[str], where: str) -> dict[str, list[torch.Tensor]]:
        """For anchoring fused q/k/v weights on q and v only: module -> [its q rows, its v rows]."""
        blocks = {name: [layout.rows("q"), layout.rows("v")] for name in modules
                  if (layout := self.qkv_layout(name)) is not None}
        if not blocks:
            raise AsftError(f"fused_qkv_anchor qv: none of the modules {', '.join(modules[:3])}... is a fused q/k/v "
                            f"weight whose row layout direction {where} knows; use fused_qkv_anchor whole")
        return blocks


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
