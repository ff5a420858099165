"""Config models that render as clear forms: Prefect's UI builds a deployment's run form from
the JSON schema of its parameters, and pre-fills it with their dumped defaults.

- An optional field whose default is None ("unset: the preset, the environment or the
  sandbox decides") shows as a plain input, empty when unset: the ``null`` branch of its
  ``anyOf`` and its null default are dropped from the schema (the UI draws that branch as a
  type switch and "Property is type None" under the input, and pre-fills a form from the
  properties' defaults). An empty input is left out of the submitted parameters: unset.
- Fields keep their declaration order: the server may keep the schema in PostgreSQL's JSONB,
  which reorders keys; each property gets ``position``, which the UI sorts by.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


def tidy_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """``json_schema_extra`` of every form model: positions, and no null branch where None means unset."""
    unset_is_none = {field.serialization_alias or field.alias or name
                     for name, field in model.model_fields.items() if field.default is None}
    for position, (key, prop) in enumerate(schema.get("properties", {}).items()):
        prop["position"] = position
        branches = prop.get("anyOf", [])
        if key in unset_is_none and {"type": "null"} in branches:
            kept = [b for b in branches if b != {"type": "null"}]
            prop.pop("anyOf")
            prop.pop("default", None)
            prop.update(kept[0] if len(kept) == 1 else {"anyOf": kept})


class FormModel(BaseModel):
    """A config model of the pipeline's form (extra fields are errors, as everywhere)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=tidy_schema)
