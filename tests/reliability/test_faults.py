"""Fault injection with real parts on 127.0.0.1: pipelines run as ``python -m asft pipeline``
subprocesses (each in its own process group and Prefect home) so kills are real SIGKILLs;
MLflow is a real ``mlflow server``; S3 is moto's server behind a fault-injecting proxy; a
full disk is a real 32 KiB tmpfs.

Every fault checks the same three things: nothing half-written looks complete (asft output
markers), no registry alias names a version that failed, is incomplete or whose run did not
finish, and the run either recovers or fails with one clear ``asft: error:`` line (exit 2).

Run: .venv/bin/python -m pytest tests/reliability/test_faults.py -p no:xdist -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults import (REPO, FaultProxy, MlflowServer, Pipeline, assert_aliases_sane, assert_nothing_half_written_is_complete,
                    assert_one_clear_line, make_prefect_home_template, pipeline_env, registry_state,
                    staging_leftovers, wait_for)

pytestmark = pytest.mark.slow

MODEL = "tiny-asft"
# A retried pipeline must not wait minutes on MLflow's default backoff (7 retries, factor 2).
MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@pytest.fixture(scope="module")
def world(request, tmp_path_factory):
    """The tiny sandbox and a migrated Prefect home that each pipeline copies (built meanwhile)."""
    template = tmp_path_factory.mktemp("prefect-template")
    warming = make_prefect_home_template(template)
    sandbox = request.getfixturevalue("tiny_sandbox")
    warming.wait(300)
    return {"sandbox": sandbox, "prefect_template": template}


def pipeline_config(world, root: str, run_key: str, tracking_uri: str, **train) -> dict:
    sandbox = world["sandbox"]
    return {
        "artifact_root": root,
        "run_key": run_key,
        "inputs": {"aligned": sandbox["aligned"], "base": sandbox["base"], "data": sandbox["finetune"],
                   "labels": sandbox["finetune_labels"], "harmful_eval": sandbox["harmful_eval"],
                   "utility_eval": sandbox["utility_eval"]},
        "screening": {"screeners": ["rules"]},
        "train": {"method": "asft", "preset": "sandbox", "epochs": 1, "max_steps": 8, "lr": 5e-3, **train},
        "evaluation": {"limit": 16, "max_new_tokens": 24, "batch_size": 16, "progress": False},
        "gates": {"max_harmful_score": 100.0, "harmful_tolerance": 100.0, "utility_tolerance": 100.0},
        "registry": {"tracking_uri": tracking_uri, "model_name": MODEL},
        "inspect_update": False,
    }


# Long enough (4 epochs of ~12 steps, capped at 40) to be caught between checkpoints.
CHECKPOINTED = {"epochs": 4, "max_steps": 40, "checkpoint_every": 3, "keep_checkpoints": 2}


def checkpoint_written(checkpoints: str):
    from asft.training import checkpoint as ckpt

    def written() -> bool:
        try:
            return bool(ckpt.list_checkpoints(checkpoints))
        except Exception:  # listing while the writer renames
            return False
    return written


def report(request, **facts) -> None:
    """Facts a run established (outcome, times), shown by ``-rA`` and in the junit properties."""
    for key, value in facts.items():
        request.node.user_properties.append((key, value))
    print(f"\n[{request.node.name}] " + ", ".join(f"{k}={v}" for k, v in facts.items()), file=sys.stderr)


# --------------------------------------------------------------------------- 1. SIGKILL mid-training

def test_sigkill_mid_training_then_retry_resumes_to_the_same_adapter(world, tmp_path, request):
    import torch
    from safetensors.torch import load_file

    from asft import storage
    from asft.training import TrainConfig, train

    root, tracking = str(tmp_path / "root"), f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    run = Pipeline(pipeline_config(world, root, "killed-1", tracking, **CHECKPOINTED), tmp_path / "run",
                   world["prefect_template"])
    adapter = storage.join(root, "runs", "killed-1", "adapter")
    checkpoints = TrainConfig(model="m", data="d", out=adapter, method="sft").checkpoints

    run.start()
    wait_for(checkpoint_written(checkpoints), 300, "the first training checkpoint", proc=run.proc)
    assert run.kill() == -9
    assert not storage.is_complete(adapter, "adapter"), "the pipeline was killed after training; use more steps"
    # While killed: the checkpoint is whole, nothing half-written looks complete, no alias moved.
    outputs = assert_nothing_half_written_is_complete(root)
    assert any(kind == "checkpoint" and complete for kind, complete in outputs.values())
    state = assert_aliases_sane(tracking)
    assert not state.get(MODEL, {}).get("aliases")

    retried = run.run()
    assert retried.rc == 0, retried.stderr[-3000:]
    summary = retried.summary()
    assert summary["gate"]["passed"] and summary["champion_moved"] and summary["model_version"] == 1
    manifest = storage.read_json(storage.join(adapter, "train_manifest.json"))
    assert manifest["resumed_from_step"] and manifest["resumed_from_step"] > 0
    assert manifest["steps"] == 40
    assert not Path(checkpoints).exists()  # the finished adapter superseded them
    assert not staging_leftovers(Path(root))
    assert_nothing_half_written_is_complete(root)
    assert registry_state(tracking)[MODEL]["aliases"] == {"champion": 1}
    assert_aliases_sane(tracking)

    # The same TrainConfig, uninterrupted, in this process: the same adapter.
    reference = TrainConfig.model_validate({**manifest["config"], "out": str(tmp_path / "reference"),
                                            "resume": False, "checkpoint_every": 0})
    train(reference)
    resumed = load_file(Path(adapter) / "adapter_model.safetensors")
    straight = load_file(tmp_path / "reference" / "adapter_model.safetensors")
    assert sorted(resumed) == sorted(straight)
    worst = max(float((resumed[k] - straight[k]).abs().max()) for k in resumed)
    # Same seed, data order, RNG and optimizer state: equal up to float summation order
    # (this process may use another thread count than the subprocess).
    for name in resumed:
        assert torch.allclose(resumed[name], straight[name], rtol=1e-5, atol=1e-6), (name, worst)
    report(request, outcome="recovered", resumed_from_step=manifest["resumed_from_step"], max_abs_diff=worst,
           retry_s=retried.seconds)


# --------------------------------------------------------------------------- 2. MLflow server killed

def test_mlflow_server_killed_and_restarted_during_a_run(world, tmp_path, request):
    from asft import storage

    server = MlflowServer(tmp_path / "mlflow-server")
    try:
        first_start = server.start()
        root = str(tmp_path / "root")
        run = Pipeline(pipeline_config(world, root, "mlflow-outage-1", server.url, **CHECKPOINTED), tmp_path / "run",
                       world["prefect_template"], **MLFLOW_RETRIES)
        run.start()
        checkpoints = storage.join(root, "runs", "mlflow-outage-1", "adapter.checkpoints")
        wait_for(checkpoint_written(checkpoints), 300, "training to start", proc=run.proc)
        server.kill()
        down_at = time.monotonic()
        # Stay down until the pipeline needs MLflow again (log_run, right after its evaluation).
        evaluation = storage.join(root, "runs", "mlflow-outage-1", "evaluation")
        wait_for(lambda: storage.is_complete(evaluation, "evaluation"), 300, "the evaluation", proc=run.proc,
                 interval=0.2)
        time.sleep(2)
        still_waiting = run.proc.poll() is None
        restart = server.start()
        up_at = time.monotonic()
        result = run.finish()
        assert_nothing_half_written_is_complete(root)
        state = assert_aliases_sane(server.url)
        if result.rc == 0:
            summary = result.summary()
            assert summary["gate"]["passed"] and summary["champion_moved"]
            assert state[MODEL]["aliases"] == {"champion": summary["model_version"]}
            outcome = "recovered (MLflow client retried)"
        else:
            line = assert_one_clear_line(result)
            assert not state.get(MODEL, {}).get("aliases"), "a failed run moved an alias"
            outcome = f"failed cleanly: {line}"
        report(request, outcome=outcome, server_down_s=round(up_at - down_at, 1), first_start_s=round(first_start, 1),
               restart_s=round(restart, 1), pipeline_waited_for_mlflow=still_waiting, run_s=result.seconds)
    finally:
        server.stop()


# --------------------------------------------------------------------------- 3. S3 errors

@pytest.fixture(scope="module")
def s3_world(world, s3_endpoint, tmp_path_factory):
    """Moto's S3 server (the session fixture) and one MLflow store for both S3 faults."""
    folder = tmp_path_factory.mktemp("s3-mlflow")
    return {**world, "moto": s3_endpoint, "tracking": f"sqlite:///{folder / 'mlflow.db'}"}


def is_checkpoint_write(method: str, path: str) -> bool:
    return method in ("PUT", "POST") and "/adapter.checkpoints/step-" in path


def assert_s3_outputs_sane(root: str) -> dict:
    """Through moto directly (not the proxy): complete markers only on whole folders."""
    outputs = assert_nothing_half_written_is_complete(root)
    assert outputs, f"nothing was written under {root}"
    return outputs


def test_s3_answering_503_for_a_while_mid_run(s3_world, tmp_path, request):
    root = "s3://asft/faults/503-window"
    with FaultProxy(s3_world["moto"]) as proxy:
        proxy.arm(is_checkpoint_write, status=503, seconds=3.0)
        run = Pipeline(pipeline_config(s3_world, root, "s3-503-1", s3_world["tracking"], **CHECKPOINTED),
                       tmp_path / "run", s3_world["prefect_template"], AWS_ENDPOINT_URL=proxy.url)
        result = run.run()
    answered_503 = proxy.count("503")
    assert proxy.fired and answered_503 > 0, "the fault never fired"
    outputs = assert_s3_outputs_sane(root)
    state = assert_aliases_sane(s3_world["tracking"])
    if result.rc == 0:
        summary = result.summary()
        assert summary["gate"]["passed"] and summary["champion_moved"]
        assert state[MODEL]["aliases"]["champion"] == summary["model_version"]
        assert outputs["asft/faults/503-window/runs/s3-503-1/adapter"] == ("adapter", True)
        outcome = "recovered (botocore/s3fs retried)"
    else:
        line = assert_one_clear_line(result)
        assert not state.get(MODEL, {}).get("aliases")
        outcome = f"failed cleanly: {line}"
    report(request, outcome=outcome, answered_503=answered_503, requests=len(proxy.log), run_s=result.seconds)


def test_s3_endpoint_gone_until_the_end(s3_world, tmp_path, request):
    root = "s3://asft/faults/endpoint-gone"
    before = registry_state(s3_world["tracking"]).get(MODEL, {}).get("aliases", {})
    with FaultProxy(s3_world["moto"]) as proxy:
        proxy.arm(is_checkpoint_write, stop=True)
        run = Pipeline(pipeline_config(s3_world, root, "s3-gone-1", s3_world["tracking"], **CHECKPOINTED),
                       tmp_path / "run", s3_world["prefect_template"], AWS_ENDPOINT_URL=proxy.url,
                       AWS_MAX_ATTEMPTS="3")
        result = run.run()
    assert proxy.fired and proxy.stopped
    line = assert_one_clear_line(result)
    outputs = assert_s3_outputs_sane(root)
    assert ("adapter", True) not in [outputs.get("asft/faults/endpoint-gone/runs/s3-gone-1/adapter")]
    state = assert_aliases_sane(s3_world["tracking"])
    assert state.get(MODEL, {}).get("aliases", {}) == before, "a failed run moved an alias"
    report(request, outcome=f"failed cleanly: {line}", run_s=result.seconds)


def test_s3_dropping_connections_during_an_upload(s3_world, tmp_path, request):
    """The first upload of `asft screen`'s files loses its connection three times in a row."""
    from faults import Result

    out = "s3://asft/faults/screen-drops"
    with FaultProxy(s3_world["moto"]) as proxy:
        proxy.arm(lambda method, path: method == "PUT" and path.split("?")[0].endswith(".jsonl"), drop=True, requests=3)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "asft", "screen", "--data", s3_world["sandbox"]["finetune"],
                               "--screener", "rules", "--out", out, "--json"], capture_output=True, text=True,
                              env=pipeline_env(tmp_path / "prefect-home", AWS_ENDPOINT_URL=proxy.url), cwd=REPO,
                              timeout=300)
    result = Result(done.returncode, done.stdout, done.stderr, round(time.monotonic() - started, 1))
    assert proxy.count("drop") == 3, proxy.log
    outputs = assert_s3_outputs_sane(out)
    if result.rc == 0:
        assert outputs["asft/faults/screen-drops"] == ("screening", True)
        outcome = "recovered (botocore retried)"
    else:
        outcome = f"failed cleanly: {assert_one_clear_line(result)}"
        assert outputs.get("asft/faults/screen-drops", ("screening", False))[1] is False
    report(request, outcome=outcome, dropped=proxy.count("drop"), run_s=result.seconds)


# --------------------------------------------------------------------------- 4. no disk space

@pytest.fixture
def tiny_disk(tmp_path):
    """A 32 KiB tmpfs (skips when mounting is not permitted)."""
    folder = tmp_path / "tiny-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}); needs root")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("command", ["direction", "screen"])
def test_no_space_left_for_an_output(world, tiny_disk, tmp_path, command, request):
    from asft import storage

    from faults import Result

    sandbox = world["sandbox"]
    out = tiny_disk / command
    args = {"direction": ["direction", "--aligned", sandbox["aligned"], "--base", sandbox["base"]],
            "screen": ["screen", "--data", sandbox["finetune"], "--screener", "rules"]}[command]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "asft", *args, "--out", str(out), "--json"], capture_output=True,
                          text=True, env=pipeline_env(tmp_path / "prefect-home"), cwd=REPO, timeout=300)
    result = Result(done.returncode, done.stdout, done.stderr, round(time.monotonic() - started, 1))
    line = assert_one_clear_line(result, "no space")
    kind = {"direction": "direction", "screen": "screening"}[command]
    assert not storage.is_complete(out, kind)
    assert not out.exists() or not any(out.iterdir())
    assert not staging_leftovers(tiny_disk), staging_leftovers(tiny_disk)
    report(request, outcome=f"failed cleanly: {line}", run_s=result.seconds)


# --------------------------------------------------------------------------- 5. two pipelines at once

def test_two_pipelines_at_once_on_one_root_and_one_new_registry(world, tmp_path, request):
    from asft import storage

    root = str(tmp_path / "shared-root")
    store = tmp_path / "new-registry" / "mlflow.db"
    tracking = f"sqlite:///{store}"
    assert not store.parent.exists()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # One Prefect server for both: two temporary servers started at the same instant can pick
    # the same random port (seen once: the loser's flow lost its API when the winner stopped).
    with prefect_test_harness(server_startup_timeout=180):
        runs = [Pipeline(pipeline_config(world, root, key, tracking), tmp_path / key, world["prefect_template"],
                         PREFECT_API_URL=PREFECT_API_URL.value()) for key in ("twin-a", "twin-b")]
        for run in runs:
            run.start()
        results = [run.finish() for run in runs]
    for result in results:
        assert result.rc == 0, result.stderr[-3000:]

    # One complete, single content-addressed folder each; no staging or swapped-aside folders.
    for kind, folder in (("direction", "directions"), ("screening", "screening"), ("evaluation", "baselines")):
        entries = sorted(p.name for p in Path(root, folder).iterdir())
        assert len(entries) == 1, (folder, entries)
        assert storage.is_complete(storage.join(root, folder, entries[0]), kind)
    assert not staging_leftovers(Path(root))
    assert_nothing_half_written_is_complete(root)

    state = assert_aliases_sane(tracking)
    assert sorted(state) == [MODEL]  # no *.promotion-lock model remains
    versions = state[MODEL]["versions"]
    assert sorted(versions) == [1, 2]
    assert {versions[n]["asft.pipeline_run_id"] for n in versions} == {"twin-a", "twin-b"}
    earlier, later = versions[1], versions[2]
    if earlier["asft.gate.passed"] == "true":  # the lock serialised them: the later compared with the earlier
        assert later["asft.gate.compared_with"] == "1"
    else:
        assert later["asft.gate.compared_with"] == "none"
    aliases = state[MODEL]["aliases"]
    passed = [n for n in (1, 2) if versions[n]["asft.gate.passed"] == "true"]
    assert aliases.get("champion") == (passed[-1] if passed else None)
    if len(passed) == 2:
        assert aliases.get("previous-champion") == 1
    summaries = {r.summary()["model_version"]: r.summary() for r in results}
    assert sorted(summaries) == [1, 2]
    report(request, outcome="both finished", versions=sorted(versions), aliases=json.dumps(aliases),
           run_s=[r.seconds for r in results])
