"""Content hashes: the streaming file hash equals hashlib's over the whole bytes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from asft import storage
from asft.errors import AsftError


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


# -- outputs never destroy what asft did not write ------------------------------------------

def write_output(uri, kind="screening", text="new"):
    with storage.staged_dir(str(uri), kind) as stage:
        (stage / "report.json").write_text(text)


def test_output_rules_refuse_what_asft_did_not_write(tmp_path, monkeypatch):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("three years of work")
    with pytest.raises(AsftError, match=f"--out {precious} holds files asft did not write; choose an empty or new folder"):
        write_output(precious)
    assert (precious / "thesis.txt").read_text() == "three years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no stage left behind

    with pytest.raises(AsftError, match="is a file"):
        write_output(precious / "thesis.txt")
    monkeypatch.chdir(precious)
    for cwd_or_above in (".", str(tmp_path)):
        with pytest.raises(AsftError, match="is the working directory or a folder above it"):
            write_output(cwd_or_above)
    data = tmp_path / "data" / "rows.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    for overlapping in (data, data.parent):
        with pytest.raises(AsftError, match=f"is the input {data} or a folder above it"):
            storage.check_output(str(overlapping), "screening", inputs=[str(data)])
    assert (precious / "thesis.txt").read_text() == "three years of work" and data.read_text() == "{}\n"


def test_an_asft_output_of_the_same_kind_is_replaced_and_another_kind_refused(tmp_path):
    out = tmp_path / "screened"
    write_output(out, text="first")
    (out / "stale.jsonl").write_text("from the first run")
    write_output(out, text="second")
    assert sorted(p.name for p in out.iterdir()) == [storage.OUTPUT_MARKER, "report.json"]
    assert (out / "report.json").read_text() == "second" and storage.is_complete(out, "screening")
    with pytest.raises(AsftError, match="holds an asft screening output, not a direction"):
        write_output(out, kind="direction")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_output(empty)
    assert storage.is_complete(empty, "screening")


def test_a_failed_write_keeps_the_old_output_and_leaves_no_stage(tmp_path):
    out = tmp_path / "screened"
    write_output(out, text="good")
    with pytest.raises(RuntimeError):
        with storage.staged_dir(str(out), "screening") as stage:
            (stage / "report.json").write_text("half")
            raise RuntimeError("killed")
    assert (out / "report.json").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["screened"]


STAGE_AND_DIE = """
import os, sys, time
from asft import storage
with storage.staged_dir(sys.argv[1], "direction") as stage:
    (stage / "V.safetensors").write_bytes(os.urandom(1 << 20))
    print("staged", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_leaves_nothing_that_looks_complete_and_its_stage_is_cleaned(tmp_path):
    out = tmp_path / "direction"
    writer = subprocess.Popen([sys.executable, "-c", STAGE_AND_DIE, str(out)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "staged"
    stages = list(tmp_path.glob(".direction.*.tmp"))
    assert len(stages) == 1 and not out.exists()  # nothing at the final name while it works
    with storage.staged_dir(str(out), "direction") as stage:  # a second writer of the same place
        (stage / "V.safetensors").write_bytes(b"v")
    assert stages[0].exists()  # a live writer's stage is not taken for a stale one
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert storage.is_complete(out, "direction") and (out / "V.safetensors").read_bytes() == b"v"
    with storage.staged_dir(str(out), "direction") as stage:
        (stage / "V.safetensors").write_bytes(b"w")
    assert not list(tmp_path.glob(".direction.*.tmp"))  # the killed writer's megabyte is gone


def test_two_writers_of_one_content_addressed_folder_both_succeed(tmp_path):
    failures = []

    def write(uri, payload):
        try:
            write_output(uri, text=payload)
        except Exception as exc:  # noqa: BLE001 (any failure is what this test counts)
            failures.append(exc)

    for trial in range(20):
        out = tmp_path / f"key-{trial}"
        threads = [threading.Thread(target=write, args=(out, "same content")) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (out / "report.json").read_text() == "same content"
    assert failures == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_s3_output_is_marked_incomplete_until_uploaded_and_replaces_stale_keys(s3_endpoint):
    uri = "s3://asft/storage-test/screened"
    write_output(uri, text="first")
    fs, path = storage.filesystem(uri)
    fs.pipe_file(path + "/stale.jsonl", b"old")
    write_output(uri, text="second")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(path)) == [storage.OUTPUT_MARKER, "report.json"]
    assert storage.is_complete(uri, "screening")
    fs.pipe_file("asft/storage-test/user/notes.txt", b"mine")
    with pytest.raises(AsftError, match="holds files asft did not write"):
        write_output("s3://asft/storage-test/user")
    assert fs.cat_file("asft/storage-test/user/notes.txt") == b"mine"


def test_s3_output_without_credentials_fails_before_any_work(s3_endpoint, monkeypatch, tmp_path):
    import s3fs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(AsftError, match=r"cannot (write there|reach).*credentials"):
            storage.check_output("s3://asft/no-credentials/out", "evaluation")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_a_folder_lists_its_partitions_in_order_but_not_other_subfolders(tmp_path):
    for day in ("2026-12-01", "2026-11-30"):
        (tmp_path / f"date={day}").mkdir()
        (tmp_path / f"date={day}" / "part-0.jsonl").write_text("{}\n")
    (tmp_path / "date=2026-11-30" / "hour=01").mkdir()
    (tmp_path / "date=2026-11-30" / "hour=01" / "part-1.jsonl").write_text("{}\n")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "old.jsonl").write_text("{}\n")
    (tmp_path / "top.jsonl").write_text("{}\n")
    kind, files = storage.list_files(tmp_path)
    names = [str(Path(uri).relative_to(tmp_path)) for uri, _ in files]
    assert kind == "folder"
    assert names == ["date=2026-11-30/hour=01/part-1.jsonl", "date=2026-11-30/part-0.jsonl",
                     "date=2026-12-01/part-0.jsonl", "top.jsonl"]
