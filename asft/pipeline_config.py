"""The pipeline's configuration: one pydantic model composed of each step's own config.

Step configs carry their input/output locations (``model``, ``data``, ``out`` ...); the
pipeline fills those in itself, so its sections are the same models minus those fields
(``asft.jobs``: each step declares its locations once). The result renders as a form in the Prefect UI, loads from YAML
for ``asft pipeline --config``, and validates with the same bounds and enums as the CLI.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from asft import jobs
from asft.errors import AsftError
from asft.forms import FormModel
from asft.gates import GateConfig
from asft.sandbox import SandboxConfig
from asft.storage import read_text

DirectionSettings = jobs.DIRECTION.settings_model("Which modules the alignment direction covers and how V is stored.")
# The pipeline's defaults are the sandbox's (its embedded default run); a run on your own
# model chooses its preset explicitly (paper: the reference hyper-parameters).
TrainSettings = jobs.TRAINING.settings_model("Fine-tuning method and hyper-parameters (empty ones come from the preset).",
                                             method="asft", preset="sandbox")
ScreenSettings = jobs.SCREENING.settings_model(
    "Harmful-sample screening of the fine-tuning data; quarantined rows never reach training.")
EvalSettings = jobs.EVALUATION.settings_model("How answers are generated and judged.")


class Inputs(FormModel):
    """What to fine-tune and on what. Leave everything empty to use the sandbox world."""

    aligned: str | None = Field(None, description="Aligned checkpoint (HF folder, safetensors; path or s3:// URI). Empty: the sandbox's.")
    base: str | None = Field(None, description="Base checkpoint the aligned model came from. Empty: the sandbox's.")
    data: str | None = Field(None, description="Fine-tuning data: a file, folder, glob or s3:// prefix (e.g. dated partitions "
                             "s3://bucket/incoming/date=YYYY-MM-DD/), JSON, JSONL, CSV, Parquet. Empty: the sandbox mixture.")
    data_window: Literal["all", "new"] = Field(
        "all", description="all: every file of the data source; new: only the files the champion's lineage has not "
        "trained on (the partitions that arrived since); with nothing new, nothing is trained.")
    labels: str | None = Field(None, description="Optional ground truth of harmful rows ({'harmful_indices': [...]}) to score the screening.")
    screening_release: str | None = Field(
        None, description="Rows a reviewer released from quarantine: a file of row ids (from an earlier run's "
        "quarantine_review.md or quarantine.jsonl). They are trained on, marked released, and the file is recorded.")
    harmful_eval: str | None = Field(None, description="Harmful prompts for the harmful score. Empty: the sandbox's held-out prompts.")
    utility_eval: dict[str, str] = Field(default_factory=dict, description="Utility sets, task -> file (sst2, agnews, gsm8k, exact). Empty: the sandbox's.")
    over_refusal_eval: str | None = Field(
        None, description="Benign prompts that look sensitive, for the over-refusal gate. Empty: the sandbox's benign "
        "how-to set with the sandbox, else 'builtin:over_refusal' (80 prompts shipped with asft).")

    @model_validator(mode="after")
    def _labels_name_whole_sources(self) -> "Inputs":
        if self.data_window == "new" and self.labels:
            raise ValueError("labels number the rows of the whole data source, and data_window 'new' reads only "
                             "the new files: leave labels empty (or use data_window 'all')")
        return self


class RegistrySettings(FormModel):
    """Where runs are tracked and models registered."""

    tracking_uri: str | None = Field(None, description="MLflow tracking URI. Empty: MLFLOW_TRACKING_URI, else a SQLite store under the artifact root.")
    experiment: str = Field("asft", description="MLflow experiment name.")
    model_name: str = Field("asft-adapter", description="Registered model name.")


class ExecutionSettings(FormModel):
    """Where the heavy steps run."""

    train_deployment: str | None = Field(
        None, description="Run training as this Prefect deployment (e.g. 'train-on-gpu/asft-train-gpu') on a GPU pool. Empty: in-process.")
    evaluate_deployment: str | None = Field(
        None, description="Run evaluation as this deployment (e.g. 'evaluate-on-gpu/asft-evaluate-gpu'). Empty: in-process.")
    train_gpus: int = Field(
        1, ge=1, le=64, description="GPUs per training run. More than 1: data-parallel under torchrun, one process "
        "per GPU (on the GPU pool the job asks for that many: the num_gpus job variable).")
    eval_shards: int = Field(
        1, ge=1, le=256, description="Split each evaluation into this many prompt shards, run at once (one "
        "evaluate_deployment run each on the GPU pool, else in-process tasks) and merged into one report.")
    manual_approval: bool = Field(False, description="Ask a reviewer in the Prefect UI before promotion; a \"no\" or no answer fails the gate.")
    approval_timeout_s: int = Field(3600, ge=1, description="How long to wait for a reviewer; no answer by then fails the gate.")


class PipelineConfig(FormModel):
    """A whole run: direction -> screening -> training -> evaluation -> gated registration."""

    artifact_root: str = Field("runs/pipeline", description="Folder or URI (s3://bucket/prefix) for every artefact of every run.")
    run_key: str | None = Field(None, description="Idempotency key of this pipeline run (default: the Prefect flow run id). "
                                "Re-running with the same key re-uses its MLflow run and model version.")
    inputs: Inputs = Field(default_factory=Inputs)
    sandbox: SandboxConfig = Field(default_factory=lambda: SandboxConfig(size="default"),
                                   description="The sandbox built when inputs are empty (the embedded default).")
    direction: DirectionSettings = Field(default_factory=DirectionSettings)
    screening: ScreenSettings = Field(default_factory=ScreenSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    gates: GateConfig = Field(default_factory=GateConfig)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    inspect_update: bool = Field(True, description="Decompose the update along/orthogonal to V for the report.")

    @model_validator(mode="after")
    def _evaluate_as_trained(self) -> "PipelineConfig":
        """The evaluation prompts the model the way it was trained: a template or system prompt
        set for training and not for the evaluation is used by both."""
        for name in ("template", "system_prompt"):
            if name in self.train.model_fields_set and name not in self.evaluation.model_fields_set:
                setattr(self.evaluation, name, getattr(self.train, name))
        return self

    def tracking_uri(self) -> str:
        """The configured MLflow store; else ``MLFLOW_TRACKING_URI``; else SQLite beside local
        artefacts, else the embedded default. The artefact folder never overrides the variable."""
        import os

        from asft import registry, storage

        if self.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
            return registry.resolve_tracking_uri(self.registry.tracking_uri)
        if storage.is_local(self.artifact_root):
            return registry.embedded_tracking_uri(storage.local_path(storage.join(self.artifact_root, "mlflow")))
        return registry.resolve_tracking_uri()


def preflight(config: PipelineConfig) -> None:
    """Check what can be checked before any work: every given input exists and the artifact
    root can be written. A UI run and ``asft pipeline`` fail here in seconds, not mid-run."""
    from asft import storage

    from asft.data.sources import resolve

    files = ("aligned", "base", "labels", "screening_release", "harmful_eval", "over_refusal_eval")
    given = {f"inputs.{name}": getattr(config.inputs, name) for name in files}
    given.update({f"inputs.utility_eval.{task}": uri for task, uri in config.inputs.utility_eval.items()})
    for field, uri in given.items():
        if uri and not storage.exists(uri):
            raise AsftError(f"{field}: {uri}: no such file or folder; check the path (or leave it empty for the sandbox's)")
    if config.inputs.data:
        try:
            resolve(config.inputs.data)  # a file, or a folder / glob / prefix holding data files
        except AsftError as exc:
            raise AsftError(f"inputs.data: {exc}") from None
    storage.check_writable(config.artifact_root)


def load_pipeline_config(uri: str | None) -> PipelineConfig:
    """The config from a YAML/JSON file, or the embedded default."""
    if uri is None:
        return PipelineConfig()
    try:
        data: Any = yaml.safe_load(read_text(uri)) or {}
    except yaml.YAMLError as exc:
        raise AsftError(f"{uri}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise AsftError(f"{uri}: {where}: {first['msg']} ({exc.error_count()} error(s)); see `asft pipeline --help`") from None
