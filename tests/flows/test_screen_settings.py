"""What the pipeline asks of screening: the probe screener reads the model about to be trained,
in training's template, unless the run names another model or template."""

from __future__ import annotations

from asft.pipeline_config import PipelineConfig
from flows.steps import screen_settings

INPUTS = {"aligned": "s3://models/aligned"}


def settings(screening: dict, train: dict | None = None):
    return screen_settings(PipelineConfig.model_validate({"screening": screening, "train": train or {}}), INPUTS)


def test_the_probe_reads_the_aligned_model_in_the_training_template():
    probe = settings({"screeners": ["encoder", "probe"]}, {"template": "llama2-chat"}).probe
    assert (probe.model, probe.template) == ("s3://models/aligned", "llama2-chat")


def test_a_model_or_template_the_run_names_is_kept():
    named = settings({"screeners": ["probe"], "probe": {"model": "s3://models/other", "template": "chat"}},
                     {"template": "alpaca"}).probe
    assert (named.model, named.template) == ("s3://models/other", "chat")
    template_only = settings({"screeners": ["probe"], "probe": {"template": "chat"}}, {"template": "alpaca"}).probe
    assert (template_only.model, template_only.template) == ("s3://models/aligned", "chat")


def test_without_the_probe_nothing_is_filled():
    assert settings({"screeners": ["encoder"]}).probe.model is None
