"""MLflow tracking and model registry: one run per pipeline run, gated champion alias.

The only asft module that imports mlflow (lazily, so ``asft --help`` stays fast).

- Tracking URI: anything MLflow accepts (``http://mlflow:5000`` in the team stack). The
  embedded default is an SQLite file with artefacts in a sibling folder:
  ``sqlite:///<dir>/mlflow.db`` + ``<dir>/artifacts`` (:func:`embedded_tracking_uri`).
- Every evaluated adapter becomes a model version whose source is the run's adapter
  artefact (``runs:/<run_id>/<path>``, no MLflow model flavour needed). Its tags hold the
  pipeline run id, the gate outcome and reasons, the evaluation summary (JSON) and the
  caller's lineage tags (data hash, direction hash, method).
- Registration finishes with the tag ``asft.registration=complete``: a retry finds the
  version by pipeline run id (or by run id) and completes its tags. A complete version is
  immutable: registering it again with the same outcome returns it untouched, with another
  outcome is an error (a new result needs a new pipeline run id).
- Promotion is gate-then-promote under :func:`promotion_lock`, a registry-side mutex (a
  registered model ``<name>.promotion-lock`` exists while it is held), so two pipelines or
  two CLI runs never both promote without comparing: the gates are taken against the
  champion of that moment, and :func:`promote` moves the alias only if the champion is
  still the one compared with (compare-and-set). Only a complete, passing version whose
  MLflow run finished gets ``champion``; ``previous-champion`` names the version that held
  ``champion`` before each move (:func:`rollback` included).
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import re
import time
import uuid
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

from asft import storage
from asft.errors import AsftError
from asft.gates import Approval, EvalSummary, GateConfig, GateDecision, decide, validate_summary

PIPELINE_RUN_TAG = "asft.pipeline_run_id"
GATE_PASSED_TAG = "asft.gate.passed"
GATE_REASONS_TAG = "asft.gate.reasons"
EVAL_SUMMARY_TAG = "asft.eval_summary"
REGISTRATION_TAG = "asft.registration"
COMPARED_WITH_TAG = "asft.gate.compared_with"  # champion version the gates compared with, or "none"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"

# Pipeline run ids and model names go into MLflow filter strings: keep them quote-free.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,249}$")
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def embedded_tracking_uri(folder: str | os.PathLike = ".asft/mlflow") -> str:
    """``sqlite:///<abs folder>/mlflow.db``; artefacts of new experiments go to ``<folder>/artifacts``."""
    path = Path(folder).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The given URI, else ``MLFLOW_TRACKING_URI``, else the embedded store in ``./.asft/mlflow``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()


@functools.lru_cache(maxsize=8)
def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is first imported
    # MLflow writes "View run ... at: URL" to stdout when a run on a tracking server ends,
    # which would corrupt the JSON summary of `asft pipeline --json`.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # Two processes creating the same new store at once race in its schema migration (the
    # client's constructor runs it): the first to hold the lock creates it, the others find it made.
    lock = Path(tracking_uri[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        c = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        c.search_registered_models(max_results=1)  # the registry store is made lazily
    return c


def client(tracking_uri: str | None = None):
    return _client(resolve_tracking_uri(tracking_uri))


def _error_code(exc: Exception) -> str:
    return getattr(exc, "error_code", "")


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise AsftError(f"{what} {value!r} is not allowed; use letters, digits and . _ : - (at most 250 characters)")
    return value


def _artifact_location(tracking_uri: str) -> str | None:
    """SQLite stores keep artefacts next to the database; servers choose their own root."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return None


def _experiment_id(c, tracking_uri: str, experiment: str) -> str:
    found = c.get_experiment_by_name(experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise AsftError(f"MLflow experiment {experiment!r} is deleted; restore it or choose another experiment name")
        return found.experiment_id
    try:
        return c.create_experiment(experiment, artifact_location=_artifact_location(tracking_uri))
    except Exception as exc:  # another process created it between the two calls
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
        return c.get_experiment_by_name(experiment).experiment_id


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested configs become dotted keys with string values, as MLflow params are."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def start_or_resume_run(
    tracking_uri: str | None, experiment: str, pipeline_run_id: str, params: Mapping[str, Any]
) -> str:
    """The MLflow run id of this pipeline run, created on first call (tag ``asft.pipeline_run_id``).

    A retry of the same pipeline run finds the same run; params it already logged must keep
    their values (MLflow params are immutable), new ones are added.
    """
    from mlflow.entities import Param

    _check_name(pipeline_run_id, "pipeline run id")
    uri = resolve_tracking_uri(tracking_uri)
    c = _client(uri)
    experiment_id = _experiment_id(c, uri, experiment)
    runs = c.search_runs(
        [experiment_id], f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}'", order_by=["attributes.start_time ASC"]
    )
    run = runs[0] if runs else c.create_run(
        experiment_id, tags={PIPELINE_RUN_TAG: pipeline_run_id}, run_name=pipeline_run_id
    )
    if run.info.status != "RUNNING":  # a retry after finish_run(..., "FAILED") runs again
        c.update_run(run.info.run_id, status="RUNNING")
    logged = run.data.params
    flat = _flatten(params)
    changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
    if changed:
        key = changed[0]
        raise AsftError(
            f"pipeline run {pipeline_run_id!r} already logged {key}={logged[key]!r}, now {flat[key]!r}; "
            "start a new pipeline run id to change parameters"
        )
    new = [Param(k, v) for k, v in flat.items() if k not in logged]
    for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
        c.log_batch(run.info.run_id, params=new[i:i + 100])
    return run.info.run_id


def finish_run(run_id: str, status: str = "FINISHED", *, tracking_uri: str | None = None) -> None:
    """Mark the run FINISHED, FAILED or KILLED (start_or_resume_run sets it RUNNING again)."""
    client(tracking_uri).set_terminated(run_id, status=status)


def _metric(name: str, value: Any, step: int, timestamp: int):
    from mlflow.entities import Metric

    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AsftError(f"metric {name!r} has the non-numeric value {value!r}; log numbers only") from None
    if not math.isfinite(number):
        raise AsftError(f"metric {name!r} is {number} at step {step}; the run diverged or the metric is undefined")
    return Metric(name, number, timestamp, step)


def log_metrics(run_id: str, metrics: Mapping[str, Any], step: int | None = None, *, tracking_uri: str | None = None) -> None:
    """Log a dict of finite numbers at one step (0 when not given)."""
    now = int(time.time() * 1000)
    batch = [_metric(k, v, step or 0, now) for k, v in metrics.items()]
    for i in range(0, len(batch), _BATCH):
        client(tracking_uri).log_batch(run_id, metrics=batch[i:i + _BATCH])


def log_metric_series(
    run_id: str, name: str, values: Sequence[float], steps: Sequence[int] | None = None, *, tracking_uri: str | None = None
) -> None:
    """A curve (loss, penalty): ``values[i]`` at ``steps[i]`` (default: 0, 1, 2, ...)."""
    steps = list(range(len(values))) if steps is None else list(steps)
    if len(steps) != len(values):
        raise AsftError(f"metric series {name!r}: {len(values)} values but {len(steps)} steps; pass one step per value")
    now = int(time.time() * 1000)
    batch = [_metric(name, v, int(s), now) for s, v in zip(steps, values)]
    for i in range(0, len(batch), _BATCH):
        client(tracking_uri).log_batch(run_id, metrics=batch[i:i + _BATCH])


def log_artifacts(run_id: str, local_dir_or_file: str | os.PathLike, artifact_path: str, *, tracking_uri: str | None = None) -> str:
    """Upload a file or a folder's contents under ``artifact_path``; returns ``runs:/<run_id>/<artifact_path>``.

    ``local_dir_or_file`` may be any storage URI (s3:// is downloaded first).
    """
    path = storage.materialize(local_dir_or_file)
    c = client(tracking_uri)
    if path.is_dir():
        c.log_artifacts(run_id, str(path), artifact_path)
        return f"runs:/{run_id}/{artifact_path}"
    c.log_artifact(run_id, str(path), artifact_path)
    return f"runs:/{run_id}/{artifact_path}/{path.name}"


def _ensure_registered_model(c, model_name: str) -> None:
    try:
        c.create_registered_model(model_name, description="Fine-tuned LoRA adapters (PEFT folders) gated on safety and utility.")
    except Exception as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise


def _find_version(c, model_name: str, pipeline_run_id: str, run_id: str):
    """The version already made for this pipeline run, also when its tags were never written."""
    found = c.search_model_versions(f"name = '{model_name}' and tag.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}'")
    found = found or c.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _registrable(c, run_id: str, model_name: str, adapter_artifact_path: str, tags: Mapping[str, str]) -> str:
    """The run's pipeline run id, once the run, its adapter artefact and the tags are fit to register."""
    _check_name(model_name, "model name")
    pipeline_run_id = c.get_run(run_id).data.tags.get(PIPELINE_RUN_TAG)
    if not pipeline_run_id:
        raise AsftError(f"MLflow run {run_id} has no {PIPELINE_RUN_TAG} tag; create it with start_or_resume_run")
    if not c.list_artifacts(run_id, adapter_artifact_path):
        raise AsftError(
            f"MLflow run {run_id} has no artefacts under {adapter_artifact_path!r}; log the adapter folder there first")
    reserved = {PIPELINE_RUN_TAG, GATE_PASSED_TAG, GATE_REASONS_TAG, EVAL_SUMMARY_TAG, REGISTRATION_TAG, COMPARED_WITH_TAG}
    clash = sorted(reserved & set(tags))
    if clash:
        raise AsftError(f"tag {clash[0]!r} is set by the registry itself; remove it from the tags you pass")
    return pipeline_run_id


def register_candidate(
    run_id: str,
    model_name: str,
    adapter_artifact_path: str,
    tags: Mapping[str, str],
    *,
    summary: EvalSummary,
    decision: GateDecision,
    compared_with: int | None = None,
    tracking_uri: str | None = None,
) -> int:
    """Register the run's adapter artefact as a version of ``model_name``; returns the version.

    ``tags`` carries lineage (e.g. ``data_hash``, ``direction_hash``, ``method``); the
    pipeline run id, gate outcome and reasons, the champion compared with and the evaluation
    summary are added here. Re-running for the same pipeline run completes a half-written
    version; a complete one is immutable (same outcome: returned untouched; other: error).
    """
    c = client(tracking_uri)
    pipeline_run_id = _registrable(c, run_id, model_name, adapter_artifact_path, tags)
    summary = validate_summary(summary, "candidate")
    _ensure_registered_model(c, model_name)
    version = _find_version(c, model_name, pipeline_run_id, run_id)
    if version is None:
        version = c.create_model_version(
            model_name, f"runs:/{run_id}/{adapter_artifact_path}", run_id=run_id,
            tags={PIPELINE_RUN_TAG: pipeline_run_id},
        )
    number = str(version.version)
    all_tags = {
        **{str(k): str(v) for k, v in tags.items()},
        PIPELINE_RUN_TAG: pipeline_run_id,
        GATE_PASSED_TAG: "true" if decision.passed else "false",
        GATE_REASONS_TAG: json.dumps(decision.reasons),
        COMPARED_WITH_TAG: "none" if compared_with is None else str(compared_with),
        EVAL_SUMMARY_TAG: summary.model_dump_json(),
    }
    if version.tags.get(REGISTRATION_TAG) == "complete":
        differs = sorted(k for k, v in all_tags.items() if version.tags.get(k) != v)
        if differs:
            raise AsftError(
                f"{model_name} v{number} (pipeline run {pipeline_run_id}) is registered and immutable; this result "
                f"differs in {', '.join(differs)}; start a new pipeline run id to register a new result")
        return int(number)
    for key, value in all_tags.items():
        c.set_model_version_tag(model_name, number, key, value)
    verdict = "passed" if decision.passed else "failed"
    c.update_model_version(model_name, number, description=f"Gates {verdict}: " + "; ".join(decision.reasons))
    c.set_model_version_tag(model_name, number, REGISTRATION_TAG, "complete")  # last: marks it whole
    return int(number)


def _alias_version(c, model_name: str, alias: str) -> int | None:
    try:
        return int(c.get_model_version_by_alias(model_name, alias).version)
    except Exception as exc:
        if _error_code(exc) in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None  # no such model, or no such alias yet
        raise


def champion(model_name: str, *, tracking_uri: str | None = None) -> tuple[int, EvalSummary] | None:
    """The version holding the ``champion`` alias and its stored evaluation summary, or None."""
    c = client(tracking_uri)
    number = _alias_version(c, _check_name(model_name, "model name"), CHAMPION)
    if number is None:
        return None
    stored = c.get_model_version(model_name, str(number)).tags.get(EVAL_SUMMARY_TAG)
    if stored is None:
        raise AsftError(
            f"champion {model_name} v{number} has no {EVAL_SUMMARY_TAG} tag; re-register it or move the alias by hand"
        )
    return number, validate_summary(json.loads(stored), f"{model_name} v{number} stored")


def _promotable(c, model_name: str, version: int, action: str) -> None:
    """A version may hold ``champion`` only when complete, passed and from a finished run."""
    mv = c.get_model_version(model_name, str(version))
    tags = mv.tags
    if tags.get(REGISTRATION_TAG) != "complete":
        raise AsftError(f"refusing to {action} {model_name} v{version}: registration is incomplete; re-run register_candidate")
    if tags.get(GATE_PASSED_TAG) != "true":
        raise AsftError(f"refusing to {action} {model_name} v{version}: its registered gate outcome is not passed")
    status = c.get_run(mv.run_id).info.status if mv.run_id else "unknown"
    if status != "FINISHED":
        raise AsftError(f"refusing to {action} {model_name} v{version}: its MLflow run {mv.run_id} is {status}, "
                        "not FINISHED; re-run the pipeline run to finish it")


def _move_champion(c, model_name: str, version: int, current: int | None) -> None:
    if current is not None:  # first, so a crash in between leaves the old champion in place
        c.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, str(current))
    c.set_registered_model_alias(model_name, CHAMPION, str(version))
    if _alias_version(c, model_name, CHAMPION) != int(version):  # someone moved it without the lock
        raise AsftError(f"{model_name}: the champion alias changed while v{version} was being promoted; "
                        "check who else writes this registry")


_ANY = object()


def promote(model_name: str, version: int, decision: GateDecision, *, expected_champion: Any = _ANY,
            tracking_uri: str | None = None) -> bool:
    """Give ``version`` the ``champion`` alias if its gates passed; returns whether the champion moved.

    A failing decision, a version whose stored gate outcome failed, whose registration is not
    complete or whose MLflow run did not finish raises AsftError and moves no alias; so does a
    champion other than ``expected_champion`` (the version the gates compared with, None for
    none): the compare-and-set that keeps a stale decision from promoting. Call it under
    :func:`promotion_lock`.
    """
    if not decision.passed:
        raise AsftError(f"refusing to promote {model_name} v{version}: gates failed ({'; '.join(decision.reasons)})")
    c = client(tracking_uri)
    _promotable(c, _check_name(model_name, "model name"), version, "promote")
    current = _alias_version(c, model_name, CHAMPION)
    if current == int(version):
        return False
    if expected_champion is not _ANY and current != expected_champion:
        raise AsftError(f"refusing to promote {model_name} v{version}: its gates compared it with "
                        f"{_describe(expected_champion)}, but the champion is now {_describe(current)}; "
                        "start a new pipeline run to compare with the current champion")
    _move_champion(c, model_name, int(version), current)
    return True


def _describe(version: int | None) -> str:
    return "no champion" if version is None else f"v{version}"


def rollback(model_name: str, to_version: int | None = None, *, tracking_uri: str | None = None) -> int:
    """Move ``champion`` to ``to_version`` (default: ``previous-champion``); returns that version.

    The target must be complete, have passed its gates and come from a finished run; the
    version that was champion becomes ``previous-champion``.
    """
    c = client(tracking_uri)
    with promotion_lock(_check_name(model_name, "model name"), tracking_uri=tracking_uri):
        target = to_version if to_version is not None else _alias_version(c, model_name, PREVIOUS_CHAMPION)
        if target is None:
            raise AsftError(f"{model_name} has no {PREVIOUS_CHAMPION} alias; nothing to roll back to")
        _promotable(c, model_name, target, "roll back to")
        current = _alias_version(c, model_name, CHAMPION)
        if current != int(target):
            _move_champion(c, model_name, int(target), current)
    return int(target)


@contextmanager
def promotion_lock(model_name: str, *, tracking_uri: str | None = None, wait_s: float = 900.0,
                   lease_s: float = 600.0) -> Iterator[None]:
    """Hold the registry-side promotion mutex of ``model_name``.

    Creating a registered model is atomic in every MLflow store (a unique name), so the lock
    is the model ``<name>.promotion-lock``: created to take it, deleted to release it. A
    holder that died leaves it behind; after ``lease_s`` others may break it.
    """
    c = client(tracking_uri)
    name = _check_name(f"{model_name}.promotion-lock", "lock name")
    holder = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            c.create_registered_model(name, tags={"holder": holder, "expires": str(time.time() + lease_s)},
                                      description="Held while asft promotes a version of " + model_name)
            break
        except Exception as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        if _break_expired_lock(c, name):
            continue
        if time.monotonic() > deadline:
            raise AsftError(f"{model_name}: the promotion lock {name} stayed taken for {wait_s:.0f} s; "
                            "wait for the other promotion, or delete that registered model if its holder died")
        time.sleep(0.2 + 0.3 * (uuid.uuid4().int % 100) / 100)
    try:
        yield
    finally:
        c.delete_registered_model(name)


def _break_expired_lock(c, name: str) -> bool:
    try:
        tags = c.get_registered_model(name).tags
    except Exception as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return True  # released meanwhile: try again at once
        raise
    if float(tags.get("expires", "inf")) < time.time():
        try:
            c.delete_registered_model(name)
        except Exception as exc:
            if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
        return True
    return False


def recorded_outcome(model_name: str, pipeline_run_id: str, *, tracking_uri: str | None = None) -> dict | None:
    """The complete version a pipeline run registered (version, passed, reasons, compared_with,
    summary), or None when it has none yet."""
    c = client(tracking_uri)
    found = c.search_model_versions(f"name = '{_check_name(model_name, 'model name')}' "
                                    f"and tag.`{PIPELINE_RUN_TAG}` = '{_check_name(pipeline_run_id, 'pipeline run id')}'")
    complete = [v for v in found if v.tags.get(REGISTRATION_TAG) == "complete"]
    if not complete:
        return None
    v = min(complete, key=lambda v: int(v.version))
    compared = v.tags.get(COMPARED_WITH_TAG, "none")
    return {"version": int(v.version), "run_id": v.run_id, "passed": v.tags.get(GATE_PASSED_TAG) == "true",
            "reasons": json.loads(v.tags.get(GATE_REASONS_TAG, "[]")),
            "compared_with": None if compared == "none" else int(compared),
            "summary": validate_summary(json.loads(v.tags[EVAL_SUMMARY_TAG]), f"{model_name} v{v.version} stored")}


class Promotion(NamedTuple):
    """What gate-then-promote did: the version registered, the decision, whether the champion
    moved, and the champion the gates compared with (version and summary; None for none)."""

    version: int
    decision: GateDecision
    moved: bool
    compared_with: int | None
    champion_summary: EvalSummary | None


def register_and_promote(run_id: str, model_name: str, adapter_artifact_path: str, tags: Mapping[str, str], *,
                         candidate: EvalSummary, gates: GateConfig, approval: Approval | None = None,
                         tracking_uri: str | None = None) -> Promotion:
    """Gate-then-promote as one step under the promotion lock: compare with the champion of
    this moment, register the (immutable) version, finish the run, promote if it passed."""
    with promotion_lock(model_name, tracking_uri=tracking_uri):
        current = champion(model_name, tracking_uri=tracking_uri)
        decision = decide(candidate, current[1] if current else None, gates, approval=approval)
        compared = current[0] if current else None
        version = register_candidate(run_id, model_name, adapter_artifact_path, tags, summary=candidate,
                                     decision=decision, compared_with=compared, tracking_uri=tracking_uri)
        finish_run(run_id, tracking_uri=tracking_uri)
        moved = promote(model_name, version, decision, expected_champion=compared,
                        tracking_uri=tracking_uri) if decision.passed else False
    return Promotion(version, decision, moved, compared, current[1] if current else None)


def version_artifact(model_name: str, version: int, path: str, dst: str | os.PathLike, *,
                     tracking_uri: str | None = None) -> Path | None:
    """Download ``path`` from the run of a model version (e.g. its evaluation samples); None
    when that run has no such artefact."""
    c = client(tracking_uri)
    run_id = c.get_model_version(_check_name(model_name, "model name"), str(version)).run_id
    if not c.list_artifacts(run_id, str(PurePosixPath(path).parent)):
        return None
    try:
        return Path(c.download_artifacts(run_id, path, str(dst)))
    except Exception as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST" or isinstance(exc, OSError):
            return None
        raise


def complete_promotion(model_name: str, recorded: dict, *, tracking_uri: str | None = None) -> bool:
    """A retry of a pipeline run that already registered: promote its version if it passed and
    was not promoted yet (a crash in between), never against another champion than the one
    its gates compared with. Returns whether the champion moved."""
    if not recorded["passed"]:
        return False
    decision = GateDecision(passed=True, reasons=recorded["reasons"], checks=[])
    with promotion_lock(model_name, tracking_uri=tracking_uri):
        return promote(model_name, recorded["version"], decision, expected_champion=recorded["compared_with"],
                       tracking_uri=tracking_uri)
