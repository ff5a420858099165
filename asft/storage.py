"""URIs, atomic writes and content hashes.

Every location in asft is a URI: a plain path, ``file://...``, ``s3://bucket/key`` or any
other fsspec protocol. Steps exchange URIs and small JSON manifests, never objects.
S3 endpoints (MinIO, moto on loopback) come from ``AWS_ENDPOINT_URL`` or
``ASFT_S3_ENDPOINT_URL``; credentials from the usual AWS variables, never from parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


@contextmanager
def staged_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder to fill; on success it replaces ``uri`` (local) or is uploaded.

    A crash leaves no half-written folder that looks complete.
    """
    uri = str(uri)
    if is_local(uri):
        final = local_path(uri)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="asft-stage-") as tmp:
        yield Path(tmp)
        upload_dir(tmp, uri)


def upload_dir(local: str | os.PathLike, uri: str) -> None:
    """Copy a local folder to ``uri``. Files go first, ``manifest*.json`` last, so readers
    that wait for the manifest never see a partial folder."""
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name.startswith("manifest") or p.name.endswith("_manifest.json"))
    fs, base = filesystem(uri)
    for file in files:
        fs.put_file(str(file), base.rstrip("/") + "/" + file.relative_to(local).as_posix())


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
