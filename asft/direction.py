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
both whole checkpoints.

Output folder: ``direction.safetensors`` (one V per module, keyed by module name, e.g.
``model.layers.0.self_attn.q_proj``) and ``manifest.json`` (inputs with content hashes,
modules, shapes, norms, a few singular values, timing, memory).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import mmap
import os
import re
import resource
import struct
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from asft import storage
from asft.errors import AsftError
from asft.modeling import StoredTensor, resolve_checkpoint, safetensors_header
from asft.regularizer import low_rank_factor

DIRECTION_FILE = "direction.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "asft-direction/1"
StoredDtype = Literal["float32", "bfloat16", "float16"]
_EXACT_SVD_MAX = 256
_STORED_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}  # what V is computed from
_SAFETENSORS_DTYPE = {dtype: name for name, dtype in _STORED_DTYPES.items()}
_STAGING_BYTES = 1 << 20  # the output's O_DIRECT staging block: page-aligned, a multiple of any sector size
_CHUNK_ELEMENTS = 1 << 18  # elements per chunk read (1 MiB of float32)
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_RACY_SECONDS = 2.0  # files changed more recently are hashed afresh (see remembered_checkpoint_sha256)


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


def remembered_checkpoint_sha256(folder: str | os.PathLike) -> str:
    """:func:`checkpoint_sha256`, remembered in the cache folder per state of the weight files
    (name, size, inode, mtime and ctime in ns), so checking an adapter's base model does not
    re-hash gigabytes on every evaluation. Files changed in the last seconds are not remembered:
    a write within the same clock tick leaves their times unchanged."""
    folder = Path(folder).resolve()
    stats = [(p.relative_to(folder).as_posix(), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
             for p in sorted(folder.rglob("*.safetensors")) if p.is_file() for st in [p.stat()]]
    entry = storage.cache_root() / "checkpoint-sha256" / storage.sha256_json([str(folder), stats])
    if entry.is_file():
        return entry.read_text().strip()
    digest = checkpoint_sha256(folder)
    if time.time() - max((s[-1] for s in stats), default=0) / 1e9 > _RACY_SECONDS:
        try:
            storage.write_text(entry, digest)
        except OSError:
            pass  # a read-only cache only costs the next caller a re-hash
    return digest


def tensor_files(folder: Path, what: str) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (from the shard index, else the files)."""
    index = folder / "model.safetensors.index.json"
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
                                "remove the stray file or add model.safetensors.index.json")
            files[key] = path
    return files


def read_tensor(path: Path, key: str) -> torch.Tensor:
    # open/close per tensor: the mapping is released, so touched pages leave RSS at once
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return fh.get_tensor(key)


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


def _stored_tensors(files: dict[str, Path], modules: list[str], what: str) -> dict[str, StoredTensor]:
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
        if t.dtype not in _STORED_DTYPES:
            raise AsftError(f"{what}: tensor {key} in {path} is stored as {t.dtype}; the direction is computed from "
                            f"{', '.join(_STORED_DTYPES)} weights: re-save the checkpoint in float32 or bfloat16")
        needed = _STORED_DTYPES[t.dtype].itemsize * torch.Size(t.shape).numel()
        if t.end - t.start != needed:
            raise AsftError(f"{what}: tensor {key} in {path} holds {t.end - t.start} bytes, not the {needed} "
                            f"its shape {t.shape} needs; re-download the checkpoint")
        stored[name] = t
    return stored


def _plan(config: DirectionConfig, aligned: Path, base: Path) -> tuple[list[str], dict[str, StoredTensor], dict[str, StoredTensor]]:
    """Module list and where each side's weights lie, after every consistency check."""
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
    a_stored = _stored_tensors(a_files, a_mods, f"aligned model {config.aligned}")
    b_stored = _stored_tensors(b_files, a_mods, f"base model {config.base}")
    for name in a_mods:
        a_shape, b_shape = a_stored[name].shape, b_stored[name].shape
        if a_shape != b_shape:
            raise AsftError(f"shapes differ for {name}: aligned {a_shape}, base {b_shape}; "
                            "the checkpoints must have the same architecture")
        if len(a_shape) != 2:
            raise AsftError(f"{pattern} match {name}.weight of shape {a_shape}, not a matrix; target linear layers only")
    return a_mods, a_stored, b_stored


class _BackgroundSha256:
    """A sha256 fed on its own worker thread, in order. A buffer passed to ``update`` must not
    change until the returned future (or ``wait``) is done."""

    def __init__(self):
        self._digest, self._pool = hashlib.sha256(), ThreadPoolExecutor(1, thread_name_prefix="asft-sha256")
        self._last: Future | None = None

    def update(self, data) -> Future:
        self._last = self._pool.submit(self._digest.update, data)
        return self._last

    def wait(self) -> None:
        if self._last is not None:
            self._last.result()

    def hexdigest(self) -> str:
        self.wait()
        self._pool.shutdown()
        return self._digest.hexdigest()


class _TensorReader:
    """One checkpoint's target tensors, read with plain positioned reads (no mmap: no
    copy-on-write faults, nothing left mapped) and hashed as stored on a worker thread.

    A float32 tensor that becomes V is read straight into V's buffer; every other read goes
    through two alternating chunk buffers, so one chunk is hashed while the next is read and
    applied, and peak memory stays at V plus a few MiB."""

    def __init__(self):
        self.digest = _BackgroundSha256()
        self.files: dict[Path, io.FileIO] = {}
        self.chunks: torch.Tensor | None = None  # allocated on first chunked read
        self.pending: list[Future | None] = [None, None]

    def _read(self, t: StoredTensor, into: memoryview, offset: int) -> None:
        if t.path not in self.files:
            self.files[t.path] = open(t.path, "rb", buffering=0)
        fh, done = self.files[t.path], 0
        fh.seek(t.start + offset)
        while done < len(into):
            n = fh.readinto(into[done:])
            if not n:
                raise AsftError(f"{t.path}: ends inside a tensor (changed or truncated while reading); re-download it")
            done += n

    def copy_into(self, t: StoredTensor, v: torch.Tensor) -> list[Future]:
        """V := the tensor, in float32. Returns, for a float32 tensor read straight into V, one
        future per chunk of V: that chunk may change only once its bytes are hashed."""
        if t.dtype != "F32":
            self._chunked(t, v, torch.Tensor.copy_)
            return []
        raw = memoryview(v.view(torch.uint8).numpy())
        self._read(t, raw, 0)
        step = 4 * _CHUNK_ELEMENTS
        return [self.digest.update(raw[i: i + step]) for i in range(0, len(raw), step)]

    def subtract_from(self, t: StoredTensor, v: torch.Tensor, guards: list[Future]) -> None:
        """V -= the tensor, chunk k once ``guards[k]`` is done."""
        self._chunked(t, v, torch.Tensor.sub_, guards)

    def _chunked(self, t: StoredTensor, v: torch.Tensor, op: Callable, guards: list[Future] = ()) -> None:
        dtype = _STORED_DTYPES[t.dtype]
        if self.chunks is None:
            self.chunks = torch.empty(2, 4 * _CHUNK_ELEMENTS, dtype=torch.uint8)
        for k, first in enumerate(range(0, v.numel(), _CHUNK_ELEMENTS)):
            n, slot = min(_CHUNK_ELEMENTS, v.numel() - first), k % 2
            if self.pending[slot] is not None:
                self.pending[slot].result()  # that buffer's previous chunk is still being hashed
            raw = self.chunks[slot, : n * dtype.itemsize]
            self._read(t, memoryview(raw.numpy()), first * dtype.itemsize)
            self.pending[slot] = self.digest.update(raw.numpy())
            if k < len(guards):
                guards[k].result()
            op(v[first: first + n], raw.view(dtype))

    def close(self) -> str:
        for fh in self.files.values():
            fh.close()
        return self.digest.hexdigest()


class _StreamingSafetensors:
    """Write a safetensors file tensor by tensor (the header is known from the shapes up front),
    hashing the bytes on a worker thread while they are written.

    Writes bypass the page cache (O_DIRECT through a page-aligned staging block) where the
    filesystem allows it: allocating page-cache pages for a new file cost 3x more than the disk
    write itself on our VM, and the closing fsync then has nothing left to flush. Elsewhere the
    same code writes through the cache."""

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
        self.order, self.dtype, self.digest = list(shapes), dtype, _BackgroundSha256()
        self.staging, self.staged, self.size = mmap.mmap(-1, _STAGING_BYTES), 0, 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            self.fd, self.direct = os.open(path, flags | _O_DIRECT, 0o666), bool(_O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.fd, self.direct = os.open(path, flags, 0o666), False
        self._append(struct.pack("<Q", len(blob)) + blob)

    def _append(self, data) -> None:
        self.digest.update(data)
        data = memoryview(data).cast("B")
        while data:
            n = min(len(data), _STAGING_BYTES - self.staged)
            self.staging[self.staged: self.staged + n] = data[:n]
            self.staged, self.size, data = self.staged + n, self.size + n, data[n:]
            if self.staged == _STAGING_BYTES:
                self._flush(_STAGING_BYTES)
        self.digest.wait()  # the caller may reuse its buffer

    def _flush(self, length: int) -> None:
        block = memoryview(self.staging)[:length]
        while block:
            try:
                n = os.write(self.fd, block)
            except OSError as exc:  # a filesystem that accepts O_DIRECT at open but not on write
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~_O_DIRECT)
                self.direct = False
                continue
            block = block[n:]
        block.release()
        self.staged = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        assert name == self.order.pop(0), "tensors must be added in header order"
        self._append(tensor.to(self.dtype).contiguous().view(-1).view(torch.uint8).numpy())

    def close(self) -> str:
        if self.staged:  # O_DIRECT writes whole sectors: pad the last block, then cut the file to size
            self._flush(-(-self.staged // mmap.PAGESIZE) * mmap.PAGESIZE if self.direct else self.staged)
        os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)
        os.close(self.fd)
        self.staging.close()
        return self.digest.hexdigest()


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
    return {"uri": uri, "model_type": _model_type(folder), "sha256": given or computed.result(),
            "sha256_source": "given" if given else "computed", "tensors_sha256": tensors_sha256}


def extract_direction(config: DirectionConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Compute and write the direction; returns the manifest (also written as manifest.json).

    The manifest records per input the whole-checkpoint ``sha256`` (``checkpoint_sha256``;
    computed here, on threads beside the streaming, unless the config gives it) and
    ``tensors_sha256``: the sha256 of the target tensors' bytes as stored, in module order.
    """
    storage.check_output(config.out, "direction", inputs=(config.aligned, config.base))
    started, rss_start, phase = time.perf_counter(), _rss_mb(), _Phases()
    with phase("plan"):
        aligned = resolve_checkpoint(config.aligned, "aligned model")
        base = resolve_checkpoint(config.base, "base model")
        modules, a_stored, b_stored = _plan(config, aligned, base)
    hashing = ThreadPoolExecutor(2, thread_name_prefix="asft-checkpoint-sha256")
    diagnostics = ThreadPoolExecutor(1, thread_name_prefix="asft-singular-values")
    checkpoint_hash = {side: None if given else hashing.submit(checkpoint_sha256, folder)
                       for side, folder, given in (("aligned", aligned, config.aligned_sha256),
                                                   ("base", base, config.base_sha256))}
    shapes = {name: a_stored[name].shape for name in modules}
    picks = sorted({round(i * (len(modules) - 1) / max(config.svd_modules - 1, 1))
                    for i in range(config.svd_modules)}) if config.svd_modules else []
    svd_names = {modules[i] for i in picks}
    v_buffer = torch.empty(max(torch.Size(s).numel() for s in shapes.values()), dtype=torch.float32)
    norms, singular, svd_method, rss_max = {}, {}, {}, rss_start
    try:
        with storage.staged_dir(config.out, "direction") as tmp:
            a_reader, b_reader = _TensorReader(), _TensorReader()
            writer = _StreamingSafetensors(tmp / DIRECTION_FILE, shapes, getattr(torch, config.dtype), {"format": FORMAT})
            try:
                for i, name in enumerate(modules):
                    v = v_buffer[: torch.Size(shapes[name]).numel()]
                    with phase("read_subtract"):
                        guards = a_reader.copy_into(a_stored[name], v)
                        b_reader.subtract_from(b_stored[name], v, guards)
                    v = v.view(shapes[name])
                    with phase("norm"):
                        norms[name] = torch.linalg.matrix_norm(v).item()
                    rss_max = max(rss_max, _rss_mb())
                    # the diagnostic runs beside the write (both only read V)
                    svd = diagnostics.submit(top_singular_values, v, config.top_singular) if name in svd_names else None
                    with phase("write"):
                        writer.add(name, v)
                    if svd is not None:
                        with phase("singular_values"):
                            singular[name], svd_method[name] = svd.result()
                    if progress and (i + 1) % max(len(modules) // 10, 1) == 0:
                        progress(f"direction: {i + 1}/{len(modules)} modules")
            finally:
                with phase("finish"):
                    digest = writer.close()
                    a_tensors_sha256, b_tensors_sha256 = a_reader.close(), b_reader.close()
            with phase("wait_checkpoint_hash"):
                inputs = {"aligned": _input_record(config.aligned, aligned, config.aligned_sha256,
                                                   checkpoint_hash["aligned"], a_tensors_sha256),
                          "base": _input_record(config.base, base, config.base_sha256,
                                                checkpoint_hash["base"], b_tensors_sha256)}
            manifest = {
                "format": FORMAT,
                **inputs,
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
                "seconds_by_phase": {k: round(v, 4) for k, v in phase.seconds.items()},
                "rss_start_mb": round(rss_start, 1),
                "rss_growth_mb": round(rss_max - rss_start, 1),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "largest_tensor_mb": round(max(s[0] * s[1] for s in shapes.values()) * 4 / 2**20, 3),
            }
            storage.write_json(tmp / MANIFEST_FILE, manifest)
    finally:
        hashing.shutdown(wait=False, cancel_futures=True)
        diagnostics.shutdown()
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
