"""Steps that declare themselves: what each step of the pipeline reads, writes and records.

A :class:`Job` names a step's config model, which of its fields are locations (inputs it
reads, the output folder it writes), which fields only say where or how it runs (device,
progress, checkpoints: they never change its figures), the kind of asft output it writes
(the storage marker) and the manifest file in that output that records what it made. From
that one table come:

- the pipeline's parameters: a step's settings are its config minus what the pipeline fills
  in (:meth:`Job.settings_model`), so the Prefect form, YAML and the CLI share one schema;
- cache keys that hash settings and the inputs' *content*, never their paths
  (:meth:`Job.identity`), and the one test of "already done" (:meth:`Job.done`: the output's
  marker says complete, with that identity when one was recorded);
- reading a finished step's result back from its output (:meth:`Job.result`), e.g. after a
  remote run on a GPU worker.
"""

from __future__ import annotations

import os
from copy import copy
from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import BaseModel, create_model

from asft import storage
from asft.data.screen import ScreenConfig
from asft.direction import DirectionConfig
from asft.evaluation.config import EvalConfig
from asft.forms import FormModel
from asft.training import TrainConfig
from asft.training.config import PRESET_FIELDS, RESUME_FREE_FIELDS


@dataclass(frozen=True)
class Job:
    name: str
    config: type[BaseModel]
    inputs: tuple[str, ...]
    kind: str
    manifest: str
    filled: tuple[str, ...] = ()     # bookkeeping the pipeline fills in (known hashes, resume)
    placement: tuple[str, ...] = ()  # where and how it runs: not part of what it computes
    preset_filled: frozenset[str] = frozenset()  # empty in the pipeline's settings: a preset decides
    output: str = "out"

    def locations(self) -> set[str]:
        return {*self.inputs, self.output}

    def settings_model(self, doc: str, **defaults: Any) -> type[BaseModel]:
        """The config without its locations and filled-in fields (same types, bounds,
        descriptions; ``defaults`` replace some defaults). Fields a preset fills are empty by
        default ("from the preset"): what the form and the YAML show is what the step gets,
        its own presets and validators still apply."""
        dropped = self.locations() | set(self.filled)
        fields = {}
        for name, info in self.config.model_fields.items():
            if name in dropped:
                continue
            info = copy(info)
            if name in self.preset_filled:
                info.default, info.description = None, f"{info.description}. Empty: from the preset."
                fields[name] = (info.annotation | None, info)
                continue
            if name in defaults:
                info.default, info.default_factory = defaults[name], None
            fields[name] = (info.annotation, info)
        return create_model(f"{self.config.__name__.removesuffix('Config')}Settings", __doc__=doc,
                            __base__=FormModel, **fields)

    def settings(self, config: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
        """What decides the step's figures: the config minus locations, filled-in and placement fields."""
        data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        dropped = self.locations() | set(self.filled) | set(self.placement)
        return {k: v for k, v in data.items() if k not in dropped}

    def identity(self, config: BaseModel | Mapping[str, Any], input_hashes: Any) -> str:
        """The cache key: the step, its settings and its inputs' content hashes."""
        return storage.sha256_json([self.name, self.settings(config), input_hashes])[:20]

    def done(self, out: str | os.PathLike, identity: str | None = None) -> bool:
        return storage.is_complete(out, self.kind, identity)

    def result(self, out: str | os.PathLike) -> dict:
        return storage.read_json(storage.join(out, self.manifest))


DIRECTION = Job("extract direction", DirectionConfig, inputs=("aligned", "base"), kind="direction",
                manifest="manifest.json", filled=("aligned_sha256", "base_sha256"))
SCREENING = Job("screen data", ScreenConfig, inputs=("data", "labels", "release"), kind="screening",
                manifest="screening_report.json")
TRAINING = Job("train adapter", TrainConfig, inputs=("model", "data", "direction", "adapter"), kind="adapter",
               manifest="train_manifest.json", filled=("resume", "checkpoint_dir"), placement=RESUME_FREE_FIELDS,
               preset_filled=PRESET_FIELDS)
# A shard (one part of a sharded evaluation) is filled in by the pipeline, which merges them.
EVALUATION = Job("evaluate", EvalConfig, inputs=("model", "adapter", "harmful", "utility", "over_refusal"),
                 kind="evaluation", manifest="report.json", filled=("shard",), placement=("device", "progress"))
