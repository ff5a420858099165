"""Raw rows into ``Record``: the schemas fine-tuning data comes in (Alpaca, chat messages,
ShareGPT conversations, prompt/response) and the column mapping that fits a user's names to
them. Chat and ShareGPT rows may hold any number of turns and keep their system prompt."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from asft.forms import FormModel
from asft.templates import Record

Schema = Literal["auto", "alpaca", "chat", "sharegpt", "prompt-response"]


class FieldMap(FormModel):
    """Which source columns hold which part of a record (rename to fit your data)."""

    instruction: str = Field("instruction", description="Alpaca: the instruction column.")
    input: str = Field("input", description="Alpaca: the optional input/context column.")
    output: str = Field("output", description="Alpaca: the answer column.")
    system: str = Field("system", description="Alpaca and prompt/response: the optional system prompt column.")
    messages: str = Field("messages", description="Chat: the list of {role, content} messages (system, user, assistant).")
    conversations: str = Field("conversations", description="ShareGPT: the list of {from, value} turns (system, human/user, gpt/assistant).")
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


# ShareGPT's speaker names, as chat roles
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _messages(value: Any, key: str, role_key: str, content_key: str, roles: dict[str, str]) -> list[tuple[str, str]]:
    """(role, text) of every message of a chat or ShareGPT row."""
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise RowError("malformed", f"field {key!r} must be a list of {{{role_key}, {content_key}}} objects")
    messages = []
    for number, message in enumerate(value, start=1):
        role, content = message.get(role_key), message.get(content_key)
        if role not in roles or not isinstance(content, str):
            raise RowError("malformed", f"{key} message {number}: needs {role_key} {'|'.join(roles)} and text "
                           f"{content_key}, got {role_key} {role!r} and {type(content).__name__} {content_key}")
        messages.append((roles[role], content))
    return messages


def _conversation_record(messages: list[tuple[str, str]], key: str) -> Record:
    """Leading system message(s), then user and assistant turns in alternation from a user turn.
    The last user turn (and its answer, if the conversation ends with one) is the record's
    instruction and output; the turns before it are its history."""
    lead = next((i for i, (role, _) in enumerate(messages) if role != "system"), len(messages))
    system, turns = [text for _, text in messages[:lead]], messages[lead:]
    if not turns:
        raise RowError("missing_field", f"{key}: no user turn")
    for number, (role, _) in enumerate(turns, start=len(system) + 1):
        expected = "user" if (number - len(system)) % 2 else "assistant"
        if role != expected:
            raise RowError("malformed", f"{key} message {number}: {role} where a {expected} turn belongs "
                           "(after optional system messages, user and assistant turns alternate from a user turn)")
    texts = [text for _, text in turns] + ([""] if len(turns) % 2 else [])
    pairs = tuple(zip(texts[0::2], texts[1::2]))
    return Record(pairs[-1][0], "", pairs[-1][1], system="\n\n".join(system) if system else None, history=pairs[:-1])


def _alpaca_record(row: dict[str, Any], fields: FieldMap, instruction: str, input_: str, output: str) -> Record:
    system = row.get(fields.system)
    if system is not None and not isinstance(system, str):
        raise RowError("malformed", f"field {fields.system!r} must be text, got {type(system).__name__}")
    return Record(instruction, input_, output, system=system)


def to_record(row: dict[str, Any], schema: Schema = "auto", fields: FieldMap | None = None) -> Record:
    """The record a raw row describes, or ValueError naming what is wrong with it."""
    fields = fields or FieldMap()
    if schema == "auto":
        schema = ("chat" if fields.messages in row else "sharegpt" if fields.conversations in row
                  else "alpaca" if fields.instruction in row else "prompt-response" if fields.prompt in row else None)
        if schema is None:
            raise RowError("missing_field", f"no {fields.instruction!r}, {fields.messages!r}, {fields.conversations!r} "
                           f"or {fields.prompt!r} field "
                             f"(got {', '.join(sorted(map(str, row))) or 'none'}); map your columns with the field options")
    if schema == "chat":
        record = _conversation_record(_messages(row.get(fields.messages), fields.messages, "role", "content",
                                                {r: r for r in ("system", "user", "assistant")}), fields.messages)
    elif schema == "sharegpt":
        record = _conversation_record(_messages(row.get(fields.conversations), fields.conversations, "from", "value",
                                                SHAREGPT_ROLES), fields.conversations)
    elif schema == "alpaca":
        record = _alpaca_record(row, fields, _text(row, fields.instruction, required=True),
                                _text(row, fields.input, required=False), _text(row, fields.output, required=False))
    else:
        answer_key = next((k for k in fields.response if k in row), fields.response[0])
        record = _alpaca_record(row, fields, _text(row, fields.prompt, required=True), "",
                                _text(row, answer_key, required=False))
    if not record.instruction.strip():
        raise RowError("missing_field", "empty instruction")
    return record


def to_row(record: Record) -> dict[str, Any]:
    """The row :func:`to_record` reads back as ``record``: Alpaca for a single turn without
    its own system prompt, chat messages otherwise."""
    if record.system is None and not record.history:
        return {"instruction": record.instruction, "input": record.input, "output": record.output}
    messages = [{"role": "system", "content": record.system}] if record.system is not None else []
    for user, answer in record.history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": record.request})
    if record.output:
        messages.append({"role": "assistant", "content": record.output})
    return {"messages": messages}


def check_size(record: Record, max_chars: int) -> None:
    size = (len(record.instruction) + len(record.input) + len(record.output) + len(record.system or "")
            + sum(len(user) + len(answer) for user, answer in record.history))
    if size > max_chars:
        raise RowError("too_long", f"row too long ({size} characters > max_chars {max_chars})")
