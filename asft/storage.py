"""URIs, atomic writes and content hashes.

Every location in asft is a URI: a plain path, ``file://...``, ``s3://bucket/key`` or any
other fsspec protocol. Steps exchange URIs and small JSON manifests, never objects.
S3 endpoints (MinIO, moto on loopback) come from ``AWS_ENDPOINT_URL`` or
``ASFT_S3_ENDPOINT_URL``; credentials from the usual AWS variables, never from parameters.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import fsspec

from asft.errors import AsftError

_CHUNK = 1 << 20


def is_local(uri: str | os.PathLike) -> bool:
    uri = str(uri)
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str | os.PathLike) -> Path:
    """The filesystem path of a local URI."""
    uri = str(uri)
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def storage_options(uri: str) -> dict[str, Any]:
    if uri.startswith("s3://"):
        endpoint = os.environ.get("ASFT_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI."""
    uri = str(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    except (ImportError, ValueError) as exc:
        raise AsftError(f"cannot open {uri!r}: {exc}; use a local path or an installed fsspec protocol such as s3://") from None
    return fs, path


def join(uri: str | os.PathLike, *parts: str) -> str:
    uri = str(uri)
    if is_local(uri):
        return str(local_path(uri).joinpath(*parts))
    return "/".join([uri.rstrip("/"), *parts])


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.exists(path)
    except Exception as exc:  # network errors surface as many types
        raise AsftError(f"cannot reach {uri}: {type(exc).__name__}: {exc}; check the URI, endpoint and credentials") from None


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise AsftError(f"{uri}: no such file; check the path") from None
    except AsftError:
        raise
    except Exception as exc:
        raise AsftError(f"cannot read {uri}: {type(exc).__name__}: {exc}; check the URI, endpoint and credentials") from None


def _unreadable(uri: str, exc: Exception) -> AsftError:
    return AsftError(f"cannot read {uri}: {type(exc).__name__}: {exc}; check the URI, endpoint and credentials")


@contextmanager
def open_binary(uri: str | os.PathLike) -> Iterator[Any]:
    """A file opened for streamed (and, where the store allows, positioned) reading."""
    fs, path = filesystem(uri)
    try:
        fh = fs.open(path, "rb")
    except FileNotFoundError:
        raise AsftError(f"{uri}: no such file; check the path") from None
    except Exception as exc:
        raise _unreadable(str(uri), exc) from None
    with fh:
        yield fh


PARTITION = re.compile(r"[^=/]+=[^/]+")  # a hive-style partition folder: date=2026-12-01


def _folder_files(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict]:
    """A folder's files and those of its partition sub-folders (key=value), recursively."""
    found = {}
    for info in fs.ls(path, detail=True):
        if info.get("type") == "directory" and PARTITION.fullmatch(info["name"].rstrip("/").rsplit("/", 1)[-1]):
            found.update(_folder_files(fs, info["name"]))
        else:
            found[info["name"]] = info
    return found


def list_files(uri: str | os.PathLike) -> tuple[str, list[tuple[str, int]]]:
    """What a location names: ("file", [itself]), or "folder" / "glob" / "prefix" with the files
    in it (a folder: not its other subfolders, but its key=value partitions), each as (URI,
    size), sorted by name (so dated partitions come in date order)."""
    uri = str(uri)
    fs, path = filesystem(uri)
    try:
        if any(c in path for c in "*?["):
            kind, found = "glob", fs.glob(path, detail=True)
        elif fs.isfile(path):
            return "file", [(uri, fs.size(path))]
        elif fs.isdir(path):
            kind, found = "folder", _folder_files(fs, path)
        else:
            kind, found = "prefix", fs.glob(path + "*", detail=True)
    except Exception as exc:
        raise _unreadable(uri, exc) from None
    files = sorted((name, info.get("size")) for name, info in found.items() if info.get("type") == "file")
    if not files and kind == "prefix":
        raise AsftError(f"{uri}: no such file, folder or prefix; check the path")
    if not files:
        raise AsftError(f"{uri}: the {'pattern matches' if kind == 'glob' else 'folder holds'} no files; check the path")
    return kind, [(name if is_local(uri) else fs.unstrip_protocol(name), size) for name, size in files]


def sha256_uri(uri: str | os.PathLike) -> str:
    """sha256 of a file at any URI, streamed."""
    if is_local(uri):
        return sha256_file(local_path(uri))
    digest = hashlib.sha256()
    with open_binary(uri) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_text(uri: str | os.PathLike) -> str:
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AsftError(f"{uri}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None


def read_json(uri: str | os.PathLike) -> Any:
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AsftError(f"{uri}: line {exc.lineno}: invalid JSON ({exc.msg})") from None


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write atomically: a temp file renamed into place locally, one PUT on object stores."""
    uri = str(uri)
    if is_local(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, path = filesystem(uri)
    with fs.open(path, "wb") as fh:  # an object becomes visible only when the upload completes
        fh.write(data)


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str | os.PathLike, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(uri: str | os.PathLike, rows: list[dict]) -> None:
    write_text(uri, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


OUTPUT_MARKER = ".asft-output.json"


def _marker(kind: str, complete: bool = True, identity: str | None = None) -> bytes:
    # deterministic bytes: the marker is part of every content hash taken of the folder
    record = {"asft_output": kind, "complete": complete, **({"identity": identity} if identity else {})}
    return json.dumps(record).encode() + b"\n"


def _read_marker(uri: str | os.PathLike) -> dict | None:
    marker = join(uri, OUTPUT_MARKER)
    if not exists(marker):
        return None
    try:
        record = json.loads(read_bytes(marker))
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("asft_output"), str) else None


def output_kind(uri: str | os.PathLike) -> tuple[str, bool] | None:
    """(kind, complete) of an asft output folder, None when ``uri`` holds no asft marker."""
    record = _read_marker(uri)
    return None if record is None else (record["asft_output"], bool(record.get("complete")))


def mark_output(uri: str | os.PathLike, kind: str) -> None:
    """Mark a folder that asft fills in place (checkpoints) as its output of ``kind``."""
    write_bytes(join(uri, OUTPUT_MARKER), _marker(kind))


def is_complete(uri: str | os.PathLike, kind: str, identity: str | None = None) -> bool:
    """True when ``uri`` holds a finished asft output of this kind (the marker is written
    last) and, when ``identity`` is given, made from exactly that (the key of its settings
    and inputs' content): the one test of "already done" that every cache uses."""
    record = _read_marker(uri)
    return (record is not None and record["asft_output"] == kind and record.get("complete") is True
            and (identity is None or record.get("identity") == identity))


def _refuse_overlap(uri: str, inputs: Iterable[str | os.PathLike | None]) -> None:
    """An output that is, or contains, the working directory or an input would replace it."""
    target = local_path(uri).expanduser().resolve()
    protected = [("the working directory", Path.cwd().resolve())]
    protected += [(f"the input {i}", local_path(i).expanduser().resolve()) for i in inputs if i and is_local(i)]
    for what, path in protected:
        if target == path or target in path.parents:
            raise AsftError(f"--out {uri} is {what} or a folder above it; choose a new folder for the output")


def _folder_state(uri: str) -> tuple[bool, bool]:
    """(is a file, holds anything) for a location."""
    fs, path = filesystem(uri)
    if fs.isfile(path):
        return True, True
    try:
        return False, bool(fs.ls(path, detail=False))
    except FileNotFoundError:
        return False, False


def check_output(uri: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse, before any work is done, an output folder asft must not replace.

    A folder may be written when it is new, empty, or an asft output of the same ``kind``
    (its marker says so); never a file, another kind's output, a folder holding files asft
    did not write, the working directory, an input or a folder above one. The location must
    also be writable: an object store gets a probe write, so missing credentials fail now,
    not after hours of training.
    """
    uri = str(uri)
    if is_local(uri):
        _refuse_overlap(uri, inputs)
    try:
        is_file, occupied = _folder_state(uri)
        found = output_kind(uri) if occupied and not is_file else None
    except AsftError:
        raise
    except Exception as exc:
        raise AsftError(f"cannot reach {uri}: {type(exc).__name__}: {exc}; check the URI, endpoint and credentials") from None
    if is_file:
        raise AsftError(f"--out {uri} is a file; give a folder (new or empty) for the output")
    if occupied and found is None:
        raise AsftError(f"--out {uri} holds files asft did not write; choose an empty or new folder")
    if found is not None and found[0] != kind:
        raise AsftError(f"--out {uri} holds an asft {found[0]} output, not a {kind}; choose another folder")
    check_writable(uri)


def check_writable(uri: str | os.PathLike) -> None:
    """One clear line now, rather than a failed upload after the work, when ``uri`` cannot be written."""
    uri = str(uri)
    if is_local(uri):
        folder = local_path(uri).expanduser().absolute()
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise AsftError(f"--out {uri}: cannot write in {folder}; choose a folder you can write to")
        return
    probe = join(uri, f".asft-write-probe-{uuid.uuid4().hex}")
    fs, path = filesystem(probe)
    try:
        fs.pipe_file(path, b"")
        fs.rm_file(path)
    except Exception as exc:
        raise AsftError(f"--out {uri}: cannot write there ({type(exc).__name__}: {exc}); "
                        "check the bucket, endpoint and credentials (AWS_* variables)") from None


@contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An flock on a folder (released when the holder exits or dies); yields whether it was got."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold while building the local folder ``target`` once: other processes wait here, then
    find it built. The lock is a file beside it, not the parent folder that ``staged_dir`` locks
    to swap the result in (locking that here would make the builder wait on itself)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    lock.touch()
    with _locked(lock):
        yield


def _clean_stale_stages(parent: Path, name: str) -> None:
    """Remove staging folders of ``name`` whose writer died (a live writer holds its lock)."""
    for stage in parent.glob(f".{glob.escape(name)}.*.tmp"):
        if not stage.is_dir() or stage.is_symlink():
            continue
        try:
            with _locked(stage, blocking=False) as got:
                if got:
                    shutil.rmtree(stage, ignore_errors=True)
        except FileNotFoundError:
            pass  # an old copy its writer deleted meanwhile


@contextmanager
def staged_dir(uri: str | os.PathLike, kind: str, identity: str | None = None) -> Iterator[Path]:
    """Yield a temp folder to fill; on success it becomes the asft output ``kind`` at ``uri``.

    Locally the new folder is swapped in atomically (old one renamed aside, new one renamed
    in, old one deleted last), under a lock on the parent folder so concurrent writers of the
    same place both succeed and one result is kept. Staging folders left by a killed writer
    are removed on the next write to the same place. On object stores the marker is written
    first as incomplete and last as complete, so a half-uploaded folder never looks finished.
    What :func:`check_output` refuses is refused here too.
    """
    uri = str(uri)
    check_output(uri, kind)
    if not is_local(uri):
        with tempfile.TemporaryDirectory(prefix="asft-stage-") as tmp:
            yield Path(tmp)
            _upload_output(Path(tmp), uri, kind, identity)
        return
    final = local_path(uri).expanduser().absolute()
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent):  # a stage is created and marked alive before any cleaner can see it
        _clean_stale_stages(parent, final.name)
        stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.", suffix=".tmp"))
        hold = os.open(stage, os.O_RDONLY)
        fcntl.flock(hold, fcntl.LOCK_EX)  # held until the stage is renamed in or removed
    old = None
    try:
        with _disk_full_is_a_user_error(uri):
            yield stage
            (stage / OUTPUT_MARKER).write_bytes(_marker(kind, identity=identity))
        with _locked(parent):
            check_output(uri, kind)  # another writer may have filled the place meanwhile
            if final.exists():
                old = parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old.tmp"
                os.rename(final, old)
            os.rename(stage, final)
    finally:
        os.close(hold)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _disk_full_is_a_user_error(uri: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise AsftError(f"--out {uri}: no space left on the device while writing it (nothing was replaced); "
                        "free some space or choose another location") from None


def _upload_output(local: Path, uri: str, kind: str, identity: str | None) -> None:
    """Marker (incomplete), files, manifests, then keys of an older output that the new one
    lacks are deleted, then the marker (complete)."""
    fs, base = filesystem(uri)
    base = base.rstrip("/")
    fs.pipe_file(f"{base}/{OUTPUT_MARKER}", _marker(kind, complete=False))
    written = upload_dir(local, uri)
    stale = [p for p in (fs.find(base) if fs.isdir(base) else [])
             if p.rstrip("/") not in written and not p.endswith("/" + OUTPUT_MARKER)]
    if stale:
        fs.rm(stale)
    fs.pipe_file(f"{base}/{OUTPUT_MARKER}", _marker(kind, identity=identity))


def upload_dir(local: str | os.PathLike, uri: str) -> set[str]:
    """Copy a local folder to ``uri``; returns the paths written. Files go first,
    ``manifest*.json`` last, so readers that wait for the manifest never see a partial folder."""
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name.startswith("manifest") or p.name.endswith("_manifest.json"))
    fs, base = filesystem(uri)
    written = set()
    for file in files:
        target = base.rstrip("/") + "/" + file.relative_to(local).as_posix()
        fs.put_file(str(file), target)
        written.add(target)
    return written


def cache_root() -> Path:
    return Path(os.environ.get("ASFT_CACHE_DIR", Path.home() / ".cache" / "asft"))


def materialize(uri: str | os.PathLike) -> Path:
    """A local path holding the file or folder at ``uri`` (remote ones are downloaded once
    into the cache, keyed by URI)."""
    uri = str(uri)
    if is_local(uri):
        path = local_path(uri)
        if not path.exists():
            raise AsftError(f"{uri}: no such file or folder; check the path")
        return path
    fs, path = filesystem(uri)
    if not exists(uri):
        raise AsftError(f"{uri}: no such object or prefix; check the bucket and key")
    # Key the cache by the objects' listing (names, sizes, ETags), so a re-written URI is
    # downloaded again rather than served stale.
    listing = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    version = sorted((name, info.get("size"), str(info.get("ETag") or info.get("mtime") or info.get("LastModified")))
                     for name, info in listing.items())
    key = sha256_json([uri, version])[:24]
    target = cache_root() / "remote" / key / Path(path).name
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=_ensure(cache_root())) as tmp:
            staged = Path(tmp) / Path(path).name
            fs.get(path, str(staged), recursive=fs.isdir(path))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """A stable content hash of JSON-able settings (keys sorted; other objects by ``str``)."""
    return sha256_bytes(json.dumps(value, sort_keys=True, default=str).encode())


def sha256_file(path: str | os.PathLike) -> str:
    # one reused buffer: a fresh bytes object per read made hashing a checkpoint grow RSS
    digest, buffer = hashlib.sha256(), bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike, pattern: str = "*") -> str:
    """One hash over the relative names and contents of the files under a folder (or of one file)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob(pattern) if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()
