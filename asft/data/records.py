"""Raw rows into ``Record``: the schemas fine-tuning data comes in (Alpaca, chat messages,
prompt/response) and the column mapping that fits a user's names to them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from asft.templates import Record

Schema = Literal["auto", "alpaca", "chat", "prompt-response"]


class FieldMap(BaseModel):
    """Which source columns hold which part of a record (rename to fit your data)."""

    model_config = ConfigDict(extra="forbid")

    instruction: str = Field("instruction", description="Alpaca: the instruction column.")
    input: str = Field("input", description="Alpaca: the optional input/context column.")
    output: str = Field("output", description="Alpaca: the answer column.")
    messages: str = Field("messages", description="Chat: the list of {role, content} messages.")
    prompt: str = Field("prompt", description="Prompt/response: the prompt column.")
    response: tuple[str, ...] = Field(("response", "completion"), description="Prompt/response: answer columns, first present wins.")


class RowError(ValueError):
    """Why one row cannot be used: a short ``code`` (counted in the report) and a message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code



def _text(row: dict[str, Any], key: str, *, required: bool) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError("missing_field", f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be text, got {type(value).__name__}")
    return value


def _chat_record(messages: Any, fields: FieldMap) -> Record:
    """One exchange: optional system message(s), one user turn, one assistant answer.
    A system message is kept as the record's input (the context of the request)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"field {fields.messages!r} must be a list of {{role, content}} objects")
    by_role: dict[str, list[str]] = {"system": [], "user": [], "assistant": []}
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role not in by_role or not isinstance(content, str):
            raise ValueError(f"chat message needs role system|user|assistant and text content, got role {role!r}")
        by_role[role].append(content)
    if len(by_role["user"]) != 1 or len(by_role["assistant"]) > 1:
        raise ValueError(f"chat rows must be single-turn (1 user, at most 1 assistant message), got "
                         f"{len(by_role['user'])} user and {len(by_role['assistant'])} assistant")
    return Record(by_role["user"][0], "\n\n".join(by_role["system"]), (by_role["assistant"] or [""])[0])


def to_record(row: dict[str, Any], schema: Schema = "auto", fields: FieldMap | None = None) -> Record:
    """The record a raw row describes, or ValueError naming what is wrong with it."""
    fields = fields or FieldMap()
    if schema == "auto":
        schema = ("chat" if fields.messages in row else "alpaca" if fields.instruction in row
                  else "prompt-response" if fields.prompt in row else None)
        if schema is None:
            raise RowError("missing_field", f"no {fields.instruction!r}, {fields.messages!r} or {fields.prompt!r} field "
                             f"(got {', '.join(sorted(map(str, row))) or 'none'}); map your columns with the field options")
    if schema == "chat":
        record = _chat_record(row.get(fields.messages), fields)
    elif schema == "alpaca":
        record = Record(_text(row, fields.instruction, required=True), _text(row, fields.input, required=False),
                        _text(row, fields.output, required=False))
    else:
        answer_key = next((k for k in fields.response if k in row), fields.response[0])
        record = Record(_text(row, fields.prompt, required=True), "", _text(row, answer_key, required=False))
    if not record.instruction.strip():
        raise RowError("missing_field", "empty instruction")
    return record


def check_size(record: Record, max_chars: int) -> None:
    size = len(record.instruction) + len(record.input) + len(record.output)
    if size > max_chars:
        raise RowError("too_long", f"row too long ({size} characters > max_chars {max_chars})")
