"""Nightly means new data: with ``inputs.data_window = new`` a run trains only on the files
(dated partitions here) the champion's lineage has not trained on, records exactly which
files and contents it used, and with nothing new trains nothing."""

from __future__ import annotations

import json

import pytest

from asft import registry, storage
from asft.pipeline_config import PipelineConfig
from test_pipeline_flow import config

pytestmark = pytest.mark.slow

PREFIX = "s3://asft/incoming-window"


def partition(world, day: str, rows: list[str]) -> str:
    uri = f"{PREFIX}/date={day}/part-0.jsonl"
    storage.write_bytes(uri, ("\n".join(rows) + "\n").encode())
    return uri


def windowed(world, run_key: str):
    from flows.pipeline import asft_pipeline

    settings = config(world, run_key, data=f"{PREFIX}/").model_dump(mode="json", by_alias=True)
    settings["inputs"].update(labels=None, data_window="new")
    settings["registry"]["model_name"] = "tiny-window"
    return asft_pipeline(config=PipelineConfig.model_validate(settings))


def recorded_files(world, result) -> dict:
    client = registry.client(world["tracking_uri"])
    path = client.download_artifacts(result["mlflow_run_id"], "data/files.json")
    return json.loads(open(path).read())


def test_nightly_trains_on_the_partitions_that_arrived_since_the_champion(world):
    rows = [line for line in storage.read_text(world["sandbox"]["finetune"]).splitlines() if line]
    first_days = {"2026-11-29": rows[:60], "2026-11-30": rows[60:120]}
    uris = [partition(world, day, part) for day, part in first_days.items()]

    first = windowed(world, "window-1")
    assert first["champion_moved"] and first["screening"]["input"] == 120
    record = recorded_files(world, first)
    assert [f["uri"] for f in record["files"]] == uris and record["champion_at_start"] is None
    assert record["seen"] == sorted(f["sha256"] for f in record["files"])
    assert all(f["sha256"] == storage.sha256_uri(f["uri"]) for f in record["files"])

    nothing = windowed(world, "window-2")
    assert nothing["nothing_new"] and nothing["model_version"] == first["model_version"] and not nothing["champion_moved"]
    client = registry.client(world["tracking_uri"])
    assert len(client.search_model_versions("name='tiny-window'")) == 1  # nothing trained, nothing registered

    late = partition(world, "2026-12-01", rows[120:160])
    third = windowed(world, "window-3")
    assert third["screening"]["input"] == 40  # the new partition only
    record = recorded_files(world, third)
    assert [f["uri"] for f in record["files"]] == [late] and record["champion_at_start"] == first["model_version"]
    assert len(record["seen"]) == 3  # the lineage: both earlier partitions and the new one
