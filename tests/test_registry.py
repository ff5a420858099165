"""Registry on a real MLflow SQLite store: runs, metrics, artefacts, idempotent registration, gated aliases."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from asft import registry
from asft.errors import AsftError
from asft.gates import EvalSummary, GateConfig, decide

PROTOCOL = {"harmful_prompts": 250, "judge": "keyword-refusal"}
CONFIG = GateConfig(max_harmful_score=20.0, harmful_tolerance=2.0, min_utility=10.0, utility_tolerance=2.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs about a second); tests use their own names."""
    folder = tmp_path_factory.mktemp("mlflow")
    return folder, registry.embedded_tracking_uri(folder)


@pytest.fixture
def adapter(tmp_path):
    """A PEFT-shaped adapter folder: config JSON and safetensors weights."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    save_file({"lora_A": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, folder / "adapter_model.safetensors")
    return folder


def summary(hs, gsm8k) -> EvalSummary:
    return EvalSummary(harmful_score=hs, harmful_score_ci95=(max(hs - 3, 0), hs + 3), utility={"gsm8k": gsm8k}, protocol=PROTOCOL)


def run_pipeline(uri, model, pipeline_run_id, adapter, result: EvalSummary):
    """What the flow does after evaluation: run, artefact, then gate-then-promote under the lock."""
    run_id = registry.start_or_resume_run(uri, "asft-test", pipeline_run_id, {"method": "asft"})
    registry.log_artifacts(run_id, adapter, "adapter", tracking_uri=uri)
    promotion = registry.register_and_promote(
        run_id, model, "adapter", {"data_hash": "d" * 8, "direction_hash": "v" * 8, "method": "asft"},
        candidate=result, gates=CONFIG, tracking_uri=uri)
    return run_id, promotion.version, promotion.decision, promotion.moved


def aliases(uri, model):
    return dict(registry.client(uri).get_registered_model(model).aliases)


def test_run_is_resumed_by_pipeline_run_id(store):
    folder, uri = store
    first = registry.start_or_resume_run(uri, "exp-resume", "pr-1", {"train": {"lr": 1e-4, "steps": 10}, "method": "asft"})
    again = registry.start_or_resume_run(uri, "exp-resume", "pr-1", {"train": {"lr": 1e-4, "steps": 10}, "seed": 3})
    other = registry.start_or_resume_run(uri, "exp-resume", "pr-2", {})
    assert first == again != other
    run = registry.client(uri).get_run(first)
    assert run.data.params == {"train.lr": "0.0001", "train.steps": "10", "method": "asft", "seed": "3"}
    assert run.data.tags[registry.PIPELINE_RUN_TAG] == "pr-1"
    # Artefacts of the embedded store live next to the database.
    assert run.info.artifact_uri.startswith((folder / "artifacts").as_uri())
    with pytest.raises(AsftError, match=r"already logged train.lr='0.0001', now '0.001'"):
        registry.start_or_resume_run(uri, "exp-resume", "pr-1", {"train": {"lr": 1e-3}})
    registry.finish_run(first, "FAILED", tracking_uri=uri)
    assert registry.start_or_resume_run(uri, "exp-resume", "pr-1", {}) == first
    assert registry.client(uri).get_run(first).info.status == "RUNNING"
    with pytest.raises(AsftError, match="pipeline run id"):
        registry.start_or_resume_run(uri, "exp-resume", "it's", {})


def test_metrics_and_series(store):
    _, uri = store
    run_id = registry.start_or_resume_run(uri, "exp-metrics", "pr-m", {})
    registry.log_metrics(run_id, {"harmful_score": 12.5, "utility.gsm8k": 30.0}, tracking_uri=uri)
    loss = [2.0 - 0.1 * i for i in range(1200)]  # more than one log_batch
    registry.log_metric_series(run_id, "loss", loss, tracking_uri=uri)
    registry.log_metric_series(run_id, "penalty", [0.5, 0.25], steps=[10, 20], tracking_uri=uri)
    c = registry.client(uri)
    assert c.get_run(run_id).data.metrics["harmful_score"] == 12.5
    history = sorted(c.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1200))
    assert [m.value for m in history] == pytest.approx(loss)
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "penalty")] == [(10, 0.5), (20, 0.25)]
    with pytest.raises(AsftError, match="'loss' is nan at step 1"):
        registry.log_metric_series(run_id, "loss", [1.0, math.nan], tracking_uri=uri)
    with pytest.raises(AsftError, match="2 values but 1 steps"):
        registry.log_metric_series(run_id, "loss", [1.0, 2.0], steps=[0], tracking_uri=uri)
    with pytest.raises(AsftError, match="non-numeric"):
        registry.log_metrics(run_id, {"x": "high"}, tracking_uri=uri)


def test_artifacts_file_and_folder(store, adapter, tmp_path):
    _, uri = store
    run_id = registry.start_or_resume_run(uri, "exp-art", "pr-a", {})
    report = tmp_path / "eval_report.json"
    report.write_text('{"harmful_score": 12.5}')
    assert registry.log_artifacts(run_id, report, "eval", tracking_uri=uri) == f"runs:/{run_id}/eval/eval_report.json"
    assert registry.log_artifacts(run_id, adapter, "adapter", tracking_uri=uri) == f"runs:/{run_id}/adapter"
    c = registry.client(uri)
    assert sorted(a.path for a in c.list_artifacts(run_id, "adapter")) == [
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    back = c.download_artifacts(run_id, "eval/eval_report.json", str(tmp_path / "back"))
    assert open(back).read() == report.read_text()
    with pytest.raises(AsftError, match="no such file"):
        registry.log_artifacts(run_id, tmp_path / "missing", "x", tracking_uri=uri)


def test_champion_lifecycle(store, adapter, tmp_path):
    _, uri = store
    model = "lifecycle"
    assert registry.champion(model, tracking_uri=uri) is None

    _, v1, d1, moved = run_pipeline(uri, model, "night-1", adapter, summary(10.0, 30.0))
    assert d1.passed and moved
    assert aliases(uri, model) == {"champion": v1}
    version, stored = registry.champion(model, tracking_uri=uri)
    assert version == v1 and stored == summary(10.0, 30.0)

    _, v2, d2, moved = run_pipeline(uri, model, "night-2", adapter, summary(8.0, 33.0))
    assert d2.passed and moved and v2 != v1
    assert aliases(uri, model) == {"champion": v2, "previous-champion": v1}

    # Worse than the champion by more than the tolerance: registered, tagged, not promoted.
    _, v3, d3, moved = run_pipeline(uri, model, "night-3", adapter, summary(11.0, 33.0))
    assert not d3.passed and not moved
    assert aliases(uri, model) == {"champion": v2, "previous-champion": v1}
    tags = registry.client(uri).get_model_version(model, str(v3)).tags
    assert tags[registry.GATE_PASSED_TAG] == "false"
    assert any("harmful_vs_champion" in r for r in json.loads(tags[registry.GATE_REASONS_TAG]))
    assert tags["data_hash"] == "d" * 8 and tags["method"] == "asft" and tags[registry.PIPELINE_RUN_TAG] == "night-3"
    assert tags[registry.REGISTRATION_TAG] == "complete"

    # The champion's source is the adapter folder, byte for byte.
    import mlflow

    mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(f"models:/{model}@champion", dst_path=str(tmp_path / "champ"))
    assert (tmp_path / "champ" / "adapter_config.json").read_text() == (adapter / "adapter_config.json").read_text()
    assert torch.equal(load_file(f"{local}/adapter_model.safetensors")["lora_A"], torch.arange(6.0).reshape(2, 3))

    assert tags[registry.COMPARED_WITH_TAG] == str(v2)

    # Rollback: previous-champion always names the version that held champion before.
    assert registry.rollback(model, tracking_uri=uri) == v1
    assert aliases(uri, model) == {"champion": v1, "previous-champion": v2}
    with pytest.raises(AsftError, match=f"refusing to roll back to {model} v{v3}: its registered gate outcome is not passed"):
        registry.rollback(model, v3, tracking_uri=uri)
    assert registry.rollback(model, tracking_uri=uri) == v2
    assert aliases(uri, model) == {"champion": v2, "previous-champion": v1}
    assert [m.name for m in registry.client(uri).search_registered_models(f"name = '{model}.promotion-lock'")] == []


def test_rollback_with_no_previous_champion(store, adapter):
    _, uri = store
    run_pipeline(uri, "lonely", "lonely-1", adapter, summary(10.0, 30.0))
    with pytest.raises(AsftError, match="nothing to roll back"):
        registry.rollback("lonely", tracking_uri=uri)


def test_promote_refuses_failing_decision_whatever_the_stored_tags(store, adapter):
    _, uri = store
    model = "refuse"
    _, v1, _, _ = run_pipeline(uri, model, "ok-1", adapter, summary(10.0, 30.0))
    bad = summary(50.0, 30.0)
    failing = decide(bad, None, CONFIG)
    run_id = registry.start_or_resume_run(uri, "asft-test", "bad-1", {})
    registry.log_artifacts(run_id, adapter, "adapter", tracking_uri=uri)
    v2 = registry.register_candidate(run_id, model, "adapter", {}, summary=bad, decision=failing, tracking_uri=uri)
    registry.finish_run(run_id, tracking_uri=uri)
    with pytest.raises(AsftError, match=f"refusing to promote {model} v{v2}: gates failed"):
        registry.promote(model, v2, failing, tracking_uri=uri)
    # A passing decision object does not override the failed outcome stored on the version.
    passing = decide(summary(10.0, 30.0), None, CONFIG)
    with pytest.raises(AsftError, match="registered gate outcome is not passed"):
        registry.promote(model, v2, passing, tracking_uri=uri)
    assert aliases(uri, model) == {"champion": v1}
    # Promoting the current champion again moves nothing.
    assert registry.promote(model, v1, passing, tracking_uri=uri) is False


def test_registration_is_idempotent_and_completes_a_half_registration(store, adapter):
    _, uri = store
    model = "idempotent"
    result = summary(10.0, 30.0)
    decision = decide(result, None, CONFIG)
    run_id = registry.start_or_resume_run(uri, "asft-test", "retry-1", {})
    registry.log_artifacts(run_id, adapter, "adapter", tracking_uri=uri)
    c = registry.client(uri)
    # A crash right after version creation: the version exists without any of our tags.
    c.create_registered_model(model)
    half = c.create_model_version(model, f"runs:/{run_id}/adapter", run_id=run_id)
    with pytest.raises(AsftError, match="registration is incomplete"):
        registry.promote(model, int(half.version), decision, tracking_uri=uri)
    assert aliases(uri, model) == {}

    first = registry.register_candidate(run_id, model, "adapter", {"method": "asft"}, summary=result, decision=decision, tracking_uri=uri)
    tags_before = dict(c.get_model_version(model, str(first)).tags)
    again = registry.register_candidate(run_id, model, "adapter", {"method": "asft"}, summary=result, decision=decision, tracking_uri=uri)
    assert first == again == int(half.version)
    assert len(c.search_model_versions(f"name = '{model}'")) == 1
    # A complete version is immutable: another outcome for the same pipeline run is refused.
    worse = summary(30.0, 30.0)
    with pytest.raises(AsftError, match=rf"v{first} \(pipeline run retry-1\) is registered and immutable; this result differs in "
                                        r"asft.eval_summary, asft.gate.passed, asft.gate.reasons"):
        registry.register_candidate(run_id, model, "adapter", {"method": "asft"}, summary=worse,
                                    decision=decide(worse, None, CONFIG), tracking_uri=uri)
    assert c.get_model_version(model, str(first)).tags == tags_before
    # Its run is still running: promotion waits for a finished run.
    with pytest.raises(AsftError, match="is RUNNING, not FINISHED"):
        registry.promote(model, first, decision, tracking_uri=uri)
    registry.finish_run(run_id, tracking_uri=uri)
    assert registry.promote(model, first, decision, tracking_uri=uri) is True


def test_promotion_is_compare_and_set_on_the_champion_compared_with(store, adapter):
    _, uri = store
    model = "cas"
    _, v1, _, _ = run_pipeline(uri, model, "cas-1", adapter, summary(10.0, 30.0))
    # A decision taken when there was no champion must not promote over v1.
    run_id = registry.start_or_resume_run(uri, "asft-test", "cas-2", {})
    registry.log_artifacts(run_id, adapter, "adapter", tracking_uri=uri)
    stale = decide(summary(15.0, 30.0), None, CONFIG)
    v2 = registry.register_candidate(run_id, model, "adapter", {}, summary=summary(15.0, 30.0), decision=stale,
                                     compared_with=None, tracking_uri=uri)
    registry.finish_run(run_id, tracking_uri=uri)
    with pytest.raises(AsftError, match=f"compared it with no champion, but the champion is now v{v1}"):
        registry.promote(model, v2, stale, expected_champion=None, tracking_uri=uri)
    recorded = registry.recorded_outcome(model, "cas-2", tracking_uri=uri)
    assert recorded["version"] == v2 and recorded["compared_with"] is None and recorded["passed"]
    with pytest.raises(AsftError, match="start a new pipeline run"):
        registry.complete_promotion(model, recorded, tracking_uri=uri)
    assert aliases(uri, model) == {"champion": v1}


def test_promotion_lock_excludes_and_breaks_an_expired_holder(store):
    _, uri = store
    c = registry.client(uri)
    with registry.promotion_lock("locked", tracking_uri=uri):
        assert c.get_registered_model("locked.promotion-lock").tags["holder"]
        with pytest.raises(AsftError, match="stayed taken for 1 s"):
            with registry.promotion_lock("locked", tracking_uri=uri, wait_s=1.0):
                pass
    # A holder that died leaves its lock; once its lease expired it is broken.
    c.create_registered_model("dead.promotion-lock", tags={"holder": "gone", "expires": "0"})
    with registry.promotion_lock("dead", tracking_uri=uri, wait_s=5.0):
        assert c.get_registered_model("dead.promotion-lock").tags["holder"] != "gone"
    assert not c.search_registered_models("name = 'dead.promotion-lock'")


def test_register_rejects_bad_input(store, adapter):
    _, uri = store
    result = summary(10.0, 30.0)
    decision = decide(result, None, CONFIG)
    run_id = registry.start_or_resume_run(uri, "asft-test", "bad-input", {})
    with pytest.raises(AsftError, match="no artefacts under 'adapter'"):
        registry.register_candidate(run_id, "m-bad", "adapter", {}, summary=result, decision=decision, tracking_uri=uri)
    registry.log_artifacts(run_id, adapter, "adapter", tracking_uri=uri)
    with pytest.raises(AsftError, match="set by the registry itself"):
        registry.register_candidate(run_id, "m-bad", "adapter", {registry.GATE_PASSED_TAG: "true"},
                                    summary=result, decision=decision, tracking_uri=uri)
    with pytest.raises(AsftError, match="model name 'a b'"):
        registry.register_candidate(run_id, "a b", "adapter", {}, summary=result, decision=decision, tracking_uri=uri)
    with pytest.raises(AsftError, match="candidate evaluation summary is invalid"):
        registry.register_candidate(run_id, "m-bad", "adapter", {}, summary=EvalSummary.model_construct(
            harmful_score=math.nan, utility={}, protocol={}), decision=decision, tracking_uri=uri)
    assert "m-bad" not in [m.name for m in registry.client(uri).search_registered_models()]


def test_resolve_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert registry.resolve_tracking_uri() == "http://mlflow:5000"
    assert registry.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert registry.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/.asft/mlflow/mlflow.db"


CREATE_STORE = """
import sys
from asft import registry
run = registry.start_or_resume_run(sys.argv[1], "race", sys.argv[2], {})
print(run)
"""


def test_pipelines_creating_one_new_store_at_once_all_succeed(tmp_path):
    import subprocess
    import sys

    uri = registry.embedded_tracking_uri(tmp_path / "new-store")
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_STORE, uri, f"racer-{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [(p.wait(timeout=180), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0], [err[-500:] for _, _, err in results]
    assert len({out.strip() for _, out, _ in results}) == 3
    assert len(registry.client(uri).search_runs([registry.client(uri).get_experiment_by_name("race").experiment_id])) == 3
