"""The pipeline's config as Prefect's UI draws it: order kept, no null type switches, empty
preset fields; a form filled from the schema's defaults resolves to the default run."""

from __future__ import annotations

from asft.pipeline_config import PipelineConfig


def _definitions(schema: dict) -> dict:
    return {"PipelineConfig": schema, **schema.get("$defs", {})}


def form_values(schema: dict, node: dict) -> dict:
    """What the UI's form holds before anyone edits it: every property's default, nested
    models filled the same way, properties without a default left out."""
    if "$ref" in node:
        node = _definitions(schema)[node["$ref"].rsplit("/", 1)[-1]]
    values = {}
    for key, prop in node.get("properties", {}).items():
        if "$ref" in prop:
            values[key] = form_values(schema, prop)
        elif "default" in prop:
            values[key] = prop["default"]
    return values


def test_properties_keep_their_order_and_have_no_null_switch():
    schema = PipelineConfig.model_json_schema()
    for name, definition in _definitions(schema).items():
        props = definition.get("properties", {})
        assert [p["position"] for p in props.values()] == list(range(len(props))), name
        for key, prop in props.items():
            assert {"type": "null"} not in prop.get("anyOf", []) or prop.get("default", "unset") is not None, (name, key)
    assert list(schema["properties"])[:3] == ["artifact_root", "run_key", "inputs"]


def test_preset_fields_are_empty_and_say_so():
    train = PipelineConfig.model_json_schema()["$defs"]["TrainSettings"]["properties"]
    for key in ("lr", "epochs", "batch_size", "max_length"):
        assert "default" not in train[key] and train[key]["description"].endswith("Empty: from the preset."), key
    assert train["lr"]["exclusiveMinimum"] == 0  # bounds kept on the plain input
    assert train["preset"]["default"] == "sandbox" and train["preset"]["enum"] == ["paper", "sandbox"]


def test_an_unedited_form_trains_like_the_default_run():
    from asft import jobs
    from asft.training import TrainConfig
    from flows.steps import train_settings

    def resolved(config: PipelineConfig) -> dict:
        locations = {"model": "m", "data": "d", "direction": "v", "out": "o"}
        return jobs.TRAINING.settings(TrainConfig.model_validate({**train_settings(config), **locations}))

    schema = PipelineConfig.model_json_schema()
    from_form = PipelineConfig.model_validate(form_values(schema, schema))
    assert resolved(from_form) == resolved(PipelineConfig())
    assert resolved(from_form)["lr"] == 5e-3 and resolved(from_form)["epochs"] == 1  # the sandbox preset
    explicit = PipelineConfig.model_validate({"train": {"preset": "paper"}})
    assert resolved(explicit)["lr"] == 5e-5  # the paper's, when chosen
    assert resolved(PipelineConfig.model_validate({"train": {"lr": 0.01}}))["lr"] == 0.01


def test_what_the_pipeline_sends_the_gpu_deployments_passes_their_schemas():
    """The server checks run_deployment's parameters against the GPU flows' schemas (no nulls
    where the step's own config has none), as it did the form's."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import is_valid, preprocess_schema

    from flows.gpu import evaluate_on_gpu, train_on_gpu
    from flows.steps import train_settings

    config = PipelineConfig()
    sent = {
        train_on_gpu: {**train_settings(config), "model": "m", "data": "d", "direction": "v", "out": "o", "resume": True},
        evaluate_on_gpu: {**config.evaluation.model_dump(exclude_unset=True), "model": "m", "harmful": "h",
                          "utility": {"sst2": "u"}, "over_refusal": "o", "out": "e", "adapter": "a"},
    }
    for flow, payload in sent.items():
        schema = preprocess_schema(parameter_schema(flow.fn).model_dump_for_openapi())
        assert is_valid({"config": payload}, schema), flow.name
    assert not is_valid({"config": {**sent[train_on_gpu], "lr": None}},
                        preprocess_schema(parameter_schema(train_on_gpu.fn).model_dump_for_openapi()))
