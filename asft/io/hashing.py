"""Content hashes of weights: of whole checkpoints (remembered per file state), and of bytes
as they stream past, on a worker thread (hashlib releases the GIL)."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from asft import storage

_RACY_SECONDS = 2.0  # files changed more recently are hashed afresh (see remembered_checkpoint_sha256)


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


class BackgroundSha256:
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
