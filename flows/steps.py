"""Prefect tasks and the pipeline's steps: thin wrappers around the asft library.

Each task takes URIs and small settings and returns a small JSON-able manifest; models and
tensors never pass through Prefect. Expensive, deterministic steps (direction, screening,
the aligned model's own evaluation) are content-addressed: their output location and their
Prefect cache key are a hash of their inputs' *content*, so an unchanged nightly run reuses
them. Results are persisted as JSON (Prefect's default serializer is pickle, which asft
never loads). The step functions at the end (``direction``, ``screening``, ...) are what the
flow calls: each names its location and its task, so the flow reads like the diagram.
"""

from __future__ import annotations

from dataclasses import dataclass
from prefect import task, unmapped
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.deployments import run_deployment

from asft import jobs, registry, storage
from asft.errors import AsftError
from asft.pipeline_config import PipelineConfig


@dataclass(frozen=True)
class Run:
    """Where one pipeline run keeps its things."""

    key: str
    root: str
    tracking_uri: str
    model_name: str

    @classmethod
    def of(cls, config: PipelineConfig, key: str) -> "Run":
        return cls(key, config.artifact_root, config.tracking_uri(), config.registry.model_name)

    def path(self, *parts: str) -> str:
        """A location of this run's own outputs (adapter, evaluation, inspection)."""
        return storage.join(self.root, "runs", self.key, *parts)


def transient(task, task_run, state) -> bool:
    """Retry failures of the world (network, storage), never a user error."""
    try:
        state.result()
    except AsftError:
        return False
    except Exception:
        return True
    return False


IO_RETRIES = dict(retries=3, retry_delay_seconds=[2, 10, 30], retry_jitter_factor=0.2, retry_condition_fn=transient)
CACHED = dict(persist_result=True, result_serializer="json", cache_key_fn=lambda ctx, params: params["key"])


def _cached(step, job: jobs.Job, out: str):
    """``step`` with Prefect's cache refreshed when its output is gone: a deleted artefact
    must be rebuilt, not served from a stale cache record."""
    return step.with_options(refresh_cache=not job.done(out))


DATA_FILES = "data/files.json"  # in each pipeline run's MLflow run: the files it trained on, and its lineage's


def data_files(source: str) -> list[dict]:
    """Every file of a data source (file, folder, glob, prefix) with its size and content hash."""
    from asft.data.sources import resolve

    return [{"uri": f.uri, "size": f.size, "sha256": storage.sha256_uri(f.uri)} for f in resolve(source)]


def content_hash(files: list[dict]) -> str:
    """What the data cache keys hash: the files' contents in reading order, never their names."""
    return storage.sha256_json([f["sha256"] for f in files])


@task(name="fingerprint inputs", **IO_RETRIES)
def fingerprint(inputs: dict) -> dict:
    """Content hashes of the checkpoints, the data and the evaluation sets: what every cache
    key is made of (checkpoint hashes are remembered per file state: a nightly run does not
    re-read unchanged weights)."""
    from asft.data.sources import source_sha256
    from asft.evaluation.datasets import resolve_set
    from asft.io.hashing import remembered_checkpoint_sha256

    def file_hash(uri: str) -> str:  # files, folders and globs alike, streamed
        return source_sha256(uri)

    return {
        "aligned": remembered_checkpoint_sha256(storage.materialize(inputs["aligned"])),
        "base": remembered_checkpoint_sha256(storage.materialize(inputs["base"])),
        "data_files": data_files(inputs["data"]),
        "labels": file_hash(inputs["labels"]) if inputs.get("labels") else None,
        "release": file_hash(inputs["screening_release"]) if inputs.get("screening_release") else None,
        "eval": {"harmful": file_hash(inputs["harmful_eval"]),
                 "over_refusal": file_hash(resolve_set(inputs["over_refusal_eval"])),
                 **{task: file_hash(uri) for task, uri in sorted(inputs["utility_eval"].items())}},
    }


@task(name="resolve inputs")
def resolve_inputs(inputs: dict, sandbox: dict, sandbox_out: str) -> dict:
    """The user's inputs; whatever is left empty comes from the sandbox world (built once)."""
    from asft.sandbox import SandboxConfig, build_sandbox

    if all(inputs[k] for k in ("aligned", "base", "data", "harmful_eval", "utility_eval")):
        return {**inputs, "over_refusal_eval": inputs["over_refusal_eval"] or "builtin:over_refusal"}
    world = build_sandbox(SandboxConfig.model_validate(sandbox), sandbox_out)
    data_from_sandbox = not inputs["data"]
    return {
        "aligned": inputs["aligned"] or world["aligned"],
        "base": inputs["base"] or world["base"],
        "data": inputs["data"] or world["finetune"],
        "labels": inputs["labels"] or (world["finetune_labels"] if data_from_sandbox else None),
        "screening_release": inputs.get("screening_release"),
        "harmful_eval": inputs["harmful_eval"] or world["harmful_eval"],
        "utility_eval": inputs["utility_eval"] or world["utility_eval"],
        "over_refusal_eval": inputs["over_refusal_eval"] or world["benign_eval"],
        "probe_examples": None if inputs["aligned"] else world["probe_examples"],  # what the sandbox model knows
    }


@task(name="extract direction", **IO_RETRIES, **CACHED)
def extract_direction(key: str, aligned: str, base: str, settings: dict, out: str, hashes: dict) -> dict:
    """``hashes``: the fingerprint step's checkpoint hashes, recorded as given instead of
    hashing both checkpoints a second time."""
    from asft.direction import DirectionConfig
    from asft.direction import extract_direction as extract

    manifest = extract(DirectionConfig(aligned=aligned, base=base, out=out, aligned_sha256=hashes["aligned"],
                                       base_sha256=hashes["base"], **settings))
    return {"uri": out, "direction_sha256": manifest["direction_sha256"], "modules": len(manifest["modules"]),
            "seconds": manifest["seconds"], "rss_growth_mb": manifest["rss_growth_mb"]}


@task(name="screen data", **IO_RETRIES, **CACHED)
def screen_data(key: str, data: str, labels: str | None, release: str | None, settings: dict, out: str) -> dict:
    """Ingest and screen the data; training only ever sees the accepted rows (and the ones a
    reviewer released). The quarantine's review page becomes a Prefect artifact."""
    from asft.data.screen import ScreenConfig, run_screen

    report = run_screen(ScreenConfig(data=data, out=out, labels=labels, release=release, **settings))
    create_markdown_artifact(storage.read_text(report["files"]["quarantine_review"]), key="quarantine-review",
                             description="Quarantined rows by category and score, with their row ids to release")
    quality = {k: report["quality"][k] for k in ("precision", "recall", "false_positive_rate")} if "quality" in report else {}
    released = {"released": report["release"]["released_rows"]} if "release" in report else {}
    return {"accepted": report["files"]["accepted"], "report_uri": report["files"]["screening_report"],
            "review_uri": report["files"]["quarantine_review"],
            "counts": {**report["counts"], **released, **quality}, "sha256": report["sha256"]}


def run_remotely(deployment: str, config: dict, job: jobs.Job, num_gpus: int = 1) -> dict:
    """Run a step as its own deployment (a GPU work pool) and read back its manifest. More
    than one GPU: the flow gets ``num_gpus`` and the job asks the pool for as many (the
    ``num_gpus`` job variable of the docker and kubernetes templates)."""
    more = dict(parameters={"config": config, "num_gpus": num_gpus}, job_variables={"num_gpus": num_gpus}) \
        if num_gpus > 1 else dict(parameters={"config": config})
    run = run_deployment(deployment, timeout=None, **more)
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"deployment {deployment} ended {run.state.name if run.state else 'without a state'}; "
                           "see that flow run's logs in the Prefect UI")
    return job.result(config[job.output])


@task(name="train adapter")
def train_adapter(config: dict, deployment: str | None, num_gpus: int = 1) -> dict:
    """Train in-process (with a progress artifact), under torchrun here (``num_gpus`` > 1) or
    as a deployment on a GPU work pool."""
    from asft.training import TrainConfig, train
    from asft.training.trainer import previous_result
    from flows.gpu import train_on_gpus

    done = previous_result(TrainConfig.model_validate(config))
    if done is not None:  # a retry of this pipeline run: the adapter it trained is complete
        return done
    if deployment:
        return {"adapter": config["out"], **run_remotely(deployment, config, jobs.TRAINING, num_gpus)}
    if num_gpus > 1:
        return train_on_gpus(TrainConfig.model_validate(config), num_gpus)
    progress_id = create_progress_artifact(0.0, key="training-progress", description="AsFT training progress")
    shown = [0.0]

    def on_step(metrics: dict) -> None:
        done = 100.0 * metrics["step"] / metrics["total_steps"]
        if done - shown[0] >= 2.0 or metrics["step"] == metrics["total_steps"]:
            shown[0] = done
            update_progress_artifact(progress_id, done)

    return train(TrainConfig.model_validate(config), on_step=on_step)


@task(name="evaluate shard")
def evaluate_shard(config: dict, deployment: str | None) -> dict:
    """One evaluation, or one shard of it (``config['shard']``), in-process or as a deployment run."""
    from asft.evaluation import EvalConfig
    from asft.evaluation import evaluate as run_eval

    if deployment:
        return run_remotely(deployment, config, jobs.EVALUATION)
    return run_eval(EvalConfig.model_validate(config))


@task(name="evaluate")
def evaluate(config: dict, deployment: str | None, shards: int = 1) -> dict:
    """One evaluation; ``shards`` > 1: a map over prompt shards (each a deployment run on the
    GPU pool, or an in-process task), merged into the one report the whole evaluation writes."""
    from asft.evaluation import EvalConfig
    from asft.evaluation.shards import merge_shards, shard_outputs

    if shards == 1:
        return evaluate_shard.fn(config, deployment)
    outs = shard_outputs(config["out"], shards)
    parts = evaluate_shard.map([{**config, "shard": shard, "out": out} for shard, out in outs.items()],
                               unmapped(deployment))
    for part in parts:
        part.result()  # the first failed shard fails the evaluation, with its error
    return merge_shards(EvalConfig.model_validate(config), list(outs.values()))


@task(name="evaluate aligned model", **CACHED)
def evaluate_baseline(key: str, config: dict, deployment: str | None, shards: int = 1) -> dict:
    """The aligned model's own scores: the 'before' of the report, cached by content (a
    sharded evaluation merges into the same report, so ``shards`` is not in the key)."""
    return evaluate.fn(config, deployment, shards)


@task(name="inspect update")
def inspect_update(direction: str, adapter: str, out: str) -> dict:
    from asft.update_inspection import inspect_update as inspect

    return inspect(direction, adapter=adapter, out=out)


# -- the steps the flow calls -----------------------------------------------------------

def prepare(config: PipelineConfig, run: Run) -> tuple[dict, dict]:
    """The inputs (the sandbox's for those left empty) and their content hashes."""
    inputs = resolve_inputs(config.inputs.model_dump(), config.sandbox.model_dump(), storage.join(run.root, "sandbox"))
    return inputs, fingerprint(inputs)


def champion_seen(run: Run) -> tuple[int | None, set[str]]:
    """The champion's version and the content hashes of every data file its lineage trained on."""
    import json
    import tempfile

    held = registry.champion(run.model_name, tracking_uri=run.tracking_uri)
    if held is None:
        return None, set()
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.version_artifact(run.model_name, held[0], DATA_FILES, tmp, tracking_uri=run.tracking_uri)
        record = json.loads(path.read_text()) if path else {}
    return held[0], set(record.get("seen", []))


def select_data(config: PipelineConfig, run: Run, inputs: dict, hashes: dict) -> tuple[dict, dict] | None:
    """This run's data: every file, or (``data_window`` new) the files the champion's lineage
    has not trained on; None when nothing is new. ``hashes`` gains what the record needs."""
    champion, seen = champion_seen(run)
    files = hashes["data_files"]
    if config.inputs.data_window == "new":
        files = [f for f in files if f["sha256"] not in seen]
        if not files:
            return None
        inputs = {**inputs, "data": [f["uri"] for f in files]} if files != hashes["data_files"] else inputs
    return inputs, {**hashes, "data": content_hash(files), "data_files": files, "data_champion": champion,
                    "data_seen": sorted(seen | {f["sha256"] for f in files})}


def data_record(config: PipelineConfig, hashes: dict) -> dict:
    """What ``data/files.json`` keeps: exactly which files (and contents) this run trained on."""
    return {"source": config.inputs.data or "sandbox mixture", "window": config.inputs.data_window,
            "files": hashes["data_files"], "seen": hashes["data_seen"], "champion_at_start": hashes["data_champion"]}


def nothing_new(config: PipelineConfig, run: Run, hashes: dict) -> dict:
    """The summary of a windowed run that found no new data: nothing trained, nothing registered."""
    version, _ = champion_seen(run)
    line = (f"nothing new, nothing trained: the {len(hashes['data_files'])} file(s) of {config.inputs.data or 'the sandbox mixture'} "
            f"were all in the data of champion v{version} of {run.model_name}")
    create_markdown_artifact(f"# Nothing new\n\n{line}.\n", key="asft-summary", description="AsFT pipeline summary")
    print(line)
    return {"nothing_new": True, "model_name": run.model_name, "model_version": version, "champion_moved": False,
            "tracking_uri": run.tracking_uri, "artifacts": run.path(), "data_files": len(hashes["data_files"])}


def direction(config: PipelineConfig, run: Run, inputs: dict, hashes: dict) -> dict:
    settings = config.direction.model_dump()
    key = jobs.DIRECTION.identity(settings, [hashes["aligned"], hashes["base"]])
    out = storage.join(run.root, "directions", key)
    return _cached(extract_direction, jobs.DIRECTION, out)(
        key, inputs["aligned"], inputs["base"], settings, out, {"aligned": hashes["aligned"], "base": hashes["base"]})


def screen_settings(config: PipelineConfig, inputs: dict):
    """The run's screening settings; the probe screener reads the model about to be trained, in
    training's template, with the sandbox's labelled requests when that model is the sandbox's,
    unless it is told otherwise."""
    screening, probe = config.screening, config.screening.probe
    if "probe" not in screening.screeners or probe.model:
        return screening
    filled = {"model": inputs["aligned"]}
    filled |= {} if "template" in probe.model_fields_set else {"template": config.train.template}
    filled |= {"examples": inputs["probe_examples"]} if inputs.get("probe_examples") and not probe.examples else {}
    return screening.model_copy(update={"probe": probe.model_copy(update=filled)})


def screening(config: PipelineConfig, run: Run, inputs: dict, hashes: dict) -> dict:
    from asft.data.screen import screener_content

    screening_config = screen_settings(config, inputs)
    settings = screening_config.model_dump(by_alias=True)
    content = [hashes["data"], hashes["labels"]] + ([hashes["release"]] if hashes.get("release") else [])
    content += screener_content(screening_config)
    key = jobs.SCREENING.identity(settings, content)
    out = storage.join(run.root, "screening", key)
    return _cached(screen_data, jobs.SCREENING, out)(key, inputs["data"], inputs["labels"],
                                                     inputs.get("screening_release"), settings, out)


def train_settings(config: PipelineConfig) -> dict:
    """What the pipeline asks of training: every setting as the form and the YAML show it, so
    a "Quick run" and an unedited "Custom run" train alike. Empty ones are left out: the
    preset (or the field's default, which for every optional field is None) fills them, and
    a GPU deployment's schema takes no nulls."""
    return config.train.model_dump(exclude_none=True)


def training(config: PipelineConfig, run: Run, inputs: dict, direction: dict, screening: dict) -> dict:
    """The run's adapter; ``resume``: a retried run continues from its checkpoints."""
    return train_adapter({**train_settings(config), "model": inputs["aligned"],
                          "data": screening["accepted"], "direction": direction["uri"], "out": run.path("adapter"),
                          "resume": True}, config.execution.train_deployment, config.execution.train_gpus)


def evaluations(config: PipelineConfig, run: Run, inputs: dict, hashes: dict, training: dict) -> tuple[dict, dict]:
    """(aligned model's report, fine-tuned adapter's report) on the same prompts."""
    settings = {**config.evaluation.model_dump(exclude_unset=True), "model": inputs["aligned"],
                "harmful": inputs["harmful_eval"], "utility": inputs["utility_eval"],
                "over_refusal": inputs["over_refusal_eval"]}
    deployment, shards = config.execution.evaluate_deployment, config.execution.eval_shards
    key = jobs.EVALUATION.identity(settings, [hashes["aligned"], hashes["eval"]])  # content, never the paths
    out = storage.join(run.root, "baselines", key)
    before = _cached(evaluate_baseline, jobs.EVALUATION, out)(key, {**settings, "out": out}, deployment, shards)
    after = evaluate({**settings, "adapter": training["adapter"], "out": run.path("evaluation")}, deployment, shards)
    return before, after


def inspection(config: PipelineConfig, run: Run, direction: dict, training: dict) -> dict | None:
    if not config.inspect_update:
        return None
    return inspect_update(direction["uri"], training["adapter"], run.path("inspection"))


def lineage(training: dict, hashes: dict, direction: dict) -> dict:
    """The tags that say what a model version was made from."""
    return {"method": training["method"], "data_sha256": hashes["data"], "data_files": str(len(hashes["data_files"])),
            "direction_sha256": direction["direction_sha256"]}


def finish_recorded(run: Run, recorded: dict) -> dict:
    """The summary of a pipeline run that already registered its version, after finishing a
    promotion a crash interrupted; nothing is trained, evaluated or re-tagged."""
    moved = registry.complete_promotion(run.model_name, recorded, tracking_uri=run.tracking_uri)
    result = recorded["summary"]
    return {"mlflow_run_id": recorded["run_id"], "tracking_uri": run.tracking_uri, "model_name": run.model_name,
            "model_version": recorded["version"], "gate": {"passed": recorded["passed"], "reasons": recorded["reasons"]},
            "champion_moved": moved, "harmful_score": result.harmful_score, "utility": result.utility,
            "artifacts": run.path(), "already_registered": True}
