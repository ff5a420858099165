"""Streaming tensors through memory one at a time: a positioned reader that hashes what it
reads, and a safetensors writer that hashes what it writes, so peak memory stays at about one
tensor whatever the checkpoint's size."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import mmap
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import torch

from asft.errors import AsftError
from asft.io.hashing import BackgroundSha256
from asft.io.safetensors import DTYPE_NAMES, FLOAT_DTYPES, StoredTensor

_STAGING_BYTES = 1 << 20  # the output's O_DIRECT staging block: page-aligned, a multiple of any sector size
_CHUNK_ELEMENTS = 1 << 18  # elements per chunk read (1 MiB of float32)
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class TensorReader:
    """One checkpoint's tensors, read with plain positioned reads (no mmap: no copy-on-write
    faults, nothing left mapped) and hashed as stored on a worker thread.

    A float32 tensor read whole goes straight into the caller's buffer; every other read goes
    through two alternating chunk buffers, so one chunk is hashed while the next is read and
    applied, and peak memory stays at the caller's buffer plus a few MiB."""

    def __init__(self):
        self.digest = BackgroundSha256()
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
        """v := the tensor, in float32. Returns, for a float32 tensor read straight into v, one
        future per chunk of v: that chunk may change only once its bytes are hashed."""
        if t.dtype != "F32":
            self._chunked(t, v, torch.Tensor.copy_)
            return []
        raw = memoryview(v.view(torch.uint8).numpy())
        self._read(t, raw, 0)
        step = 4 * _CHUNK_ELEMENTS
        return [self.digest.update(raw[i: i + step]) for i in range(0, len(raw), step)]

    def subtract_from(self, t: StoredTensor, v: torch.Tensor, guards: list[Future]) -> None:
        """v -= the tensor, chunk k once ``guards[k]`` is done."""
        self._chunked(t, v, torch.Tensor.sub_, guards)

    def _chunked(self, t: StoredTensor, v: torch.Tensor, op: Callable, guards: list[Future] = ()) -> None:
        dtype = FLOAT_DTYPES[t.dtype]
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
        """Close the files; returns the sha256 of every byte read, in order."""
        for fh in self.files.values():
            fh.close()
        return self.digest.hexdigest()


class StreamingSafetensorsWriter:
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
            size = itemsize * torch.Size(shape).numel()
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
        self.order, self.dtype, self.digest = list(shapes), dtype, BackgroundSha256()
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
        """Finish the file (fsynced); returns the sha256 of its bytes."""
        if self.staged:  # O_DIRECT writes whole sectors: pad the last block, then cut the file to size
            self._flush(-(-self.staged // mmap.PAGESIZE) * mmap.PAGESIZE if self.direct else self.staged)
        os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)
        os.close(self.fd)
        self.staging.close()
        return self.digest.hexdigest()
