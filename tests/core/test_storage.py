"""Content hashes: the streaming file hash equals hashlib's over the whole bytes."""

from __future__ import annotations

import hashlib
import os

from asft import storage


def test_sha256_file_streams_chunks_and_matches_one_shot_hash(tmp_path):
    data = os.urandom(3 * (1 << 20) + 12345)  # several read chunks and a ragged tail
    path = tmp_path / "shard.safetensors"
    path.write_bytes(data)
    assert storage.sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert storage.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_sha256_tree_changes_with_a_file_name_or_a_byte(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    first = storage.sha256_tree(tmp_path, "*.safetensors")
    (tmp_path / "a.safetensors").rename(tmp_path / "b.safetensors")
    renamed = storage.sha256_tree(tmp_path, "*.safetensors")
    (tmp_path / "b.safetensors").write_bytes(b"weightz")
    assert len({first, renamed, storage.sha256_tree(tmp_path, "*.safetensors")}) == 3
