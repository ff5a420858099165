"""The one record type and the prompt templates used for training and generation.

A record is a conversation: an optional system prompt, earlier (user, assistant) turns, and
the last user turn (``instruction`` + ``input``) with its answer (``output``).

:func:`conversation_ids` is the one place a conversation becomes token ids: training
(:func:`encode_example`: loss on every assistant turn, everything else -100) and generation
(:func:`prompt_ids`) both call it, so a prompt is the same ids in both.

Templates: ``alpaca`` (the paper's; its tokens are pinned, the sandbox models were trained
on them), ``llama2-chat``, ``chat`` (the tokenizer's own chat template: what a serving stack
renders) and ``auto`` (``chat`` when the tokenizer has one, else ``alpaca``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from asft.errors import AsftError, first_line

IGNORE_INDEX = -100

TemplateName = Literal["auto", "alpaca", "llama2-chat", "chat"]

# The paper's generation prompt (method.md, "Evaluation protocol").
SYSTEM_PROMPT = "You are a helpful assistant. Make sure you always execute users' instructions."


@dataclass(frozen=True)
class Record:
    """One instruction-following example, whatever schema it came from: the last user turn
    (``instruction``, ``input``) and its answer (``output``, "" when there is none), after
    ``history`` (earlier (user, assistant) turns) and ``system`` (None: the configured one)."""

    instruction: str
    input: str = ""
    output: str = ""
    system: str | None = None
    history: tuple[tuple[str, str], ...] = ()

    @property
    def request(self) -> str:
        """The last user turn as the user wrote it."""
        return self.instruction + (f"\n\n{self.input}" if self.input else "")

    def user_turns(self) -> tuple[str, ...]:
        """Every user turn, first to last."""
        return tuple(user for user, _ in self.history) + (self.request,)

    def exchanges(self) -> tuple[tuple[str, str], ...]:
        """Every (user, assistant) pair, the last one with ``output`` ("" when unanswered)."""
        return self.history + ((self.request, self.output),)


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or "this model"


def resolve_template(template: TemplateName, tokenizer) -> str:
    """``auto`` made concrete for this tokenizer; ``chat`` without a chat template is an error."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_chat else "alpaca"
    if template == "chat" and not has_chat:
        raise AsftError(f"template chat: the tokenizer of {_name(tokenizer)} has no chat "
                        "template; use --template auto (alpaca for such a tokenizer), alpaca or llama2-chat")
    if template not in ("alpaca", "llama2-chat", "chat"):
        raise AsftError(f"unknown template {template!r}; choose auto, alpaca, llama2-chat or chat")
    return template


def _system(record: Record, system_prompt: str) -> str:
    return record.system if record.system is not None else system_prompt


# --- string templates (alpaca, llama2-chat): each turn tokenized on its own, as always ----

def _string_prompt(template: str, user: str, system: str, first: bool, record: Record | None = None) -> str:
    """One user turn's prompt; ``record`` is given for the last turn (alpaca keeps its input apart)."""
    if template == "alpaca":
        head = f"{system}\n\n" if first and system else ""
        if record is not None:
            body = f"### Instruction:\n{record.instruction}\n\n"
            body += f"### Input:\n{record.input}\n\n" if record.input else ""
        else:
            body = f"### Instruction:\n{user}\n\n"
        return head + body + "### Response:"
    system_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if first and system else ""
    return f"[INST] {system_block}{user} [/INST]"


def _string_pieces(tokenizer, record: Record, template: str, system: str,
                   answered: bool) -> Iterator[tuple[list[int], bool]]:
    """(token ids, learned) pieces: prompts with BOS where the template starts one (every
    llama2-chat turn, alpaca's first), answers as " " + text + EOS."""
    exchanges = record.exchanges()
    for number, (user, answer) in enumerate(exchanges):
        last = number == len(exchanges) - 1
        text = _string_prompt(template, user, system, number == 0, record if last else None)
        specials = number == 0 or template == "llama2-chat"
        yield tokenizer(text, add_special_tokens=specials)["input_ids"], False
        if not last or answered:
            yield tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id], True


# --- chat templates: the tokenizer's own, rendered as a whole --------------------------

def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:
        raise AsftError(f"the chat template of {_name(tokenizer)} cannot render the "
                        f"conversation ({first_line(exc)}); if it has no system role, set --system-prompt ''") from None


def _chat_texts(tokenizer, record: Record, system: str, answered: bool) -> Iterator[tuple[str, bool]]:
    """(text, learned) pieces of the rendered conversation: each assistant piece is what the
    template renders after the generation prompt up to the end of that turn (the answer and
    the template's end-of-turn, e.g. ``<|eot_id|>``); the rest is scaffolding and user turns."""
    messages = [{"role": "system", "content": system}] if system else []
    exchanges = record.exchanges()
    done = ""
    for number, (user, answer) in enumerate(exchanges):
        messages.append({"role": "user", "content": user})
        cue = _render(tokenizer, messages, generation_prompt=True)
        pieces = [(cue, False)]
        if number < len(exchanges) - 1 or answered:
            messages.append({"role": "assistant", "content": answer})
            pieces.append((_render(tokenizer, messages, generation_prompt=False), True))
        for text, learned in pieces:
            if not text.startswith(done):
                raise AsftError(f"the chat template of {_name(tokenizer)} does not render a "
                                "conversation as the start of its continuation, so turns cannot be told apart; "
                                "use --template alpaca or llama2-chat")
            yield text[len(done):], learned
            done = text


def _chat_pieces(tokenizer, record: Record, system: str, answered: bool) -> Iterator[tuple[list[int], bool]]:
    """Token pieces of :func:`_chat_texts`, each tokenized in the context of all text before it
    (as a server tokenizes the whole prompt), or on its own where a merge crosses the boundary."""
    ids: list[int] = []
    text = ""
    for piece, learned in _chat_texts(tokenizer, record, system, answered):
        text += piece
        whole = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template renders BOS itself
        new = (whole[len(ids):] if whole[:len(ids)] == ids
               else tokenizer(piece, add_special_tokens=False)["input_ids"])
        ids += new
        yield new, learned


def conversation_ids(tokenizer, record: Record, template: TemplateName = "alpaca", *,
                     system_prompt: str = SYSTEM_PROMPT, answered: bool = True) -> tuple[list[int], list[int]]:
    """(token ids, labels) of the record's conversation; labels are -100 except on assistant
    turns (and their end-of-turn token). ``answered=False`` stops at the last answer's cue."""
    template = resolve_template(template, tokenizer)
    system = _system(record, system_prompt)
    pieces = (_chat_pieces(tokenizer, record, system, answered) if template == "chat"
              else _string_pieces(tokenizer, record, template, system, answered))
    ids: list[int] = []
    labels: list[int] = []
    for piece, learned in pieces:
        ids += piece
        labels += piece if learned else [IGNORE_INDEX] * len(piece)
    return ids, labels


def prompt_ids(tokenizer, record: Record, template: TemplateName = "alpaca", *,
               system_prompt: str = SYSTEM_PROMPT) -> list[int]:
    """The ids a model sees before its answer to the record's last user turn."""
    return conversation_ids(tokenizer, record, template, system_prompt=system_prompt, answered=False)[0]


def encode_example(tokenizer, record: Record, template: TemplateName = "alpaca", max_length: int = 512, *,
                   system_prompt: str = SYSTEM_PROMPT) -> dict[str, list[int]]:
    """Token ids and labels for one training example, cut to ``max_length``."""
    ids, labels = conversation_ids(tokenizer, record, template, system_prompt=system_prompt)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def render_prompt(record: Record, template: TemplateName = "alpaca", tokenizer=None, *,
                  system_prompt: str = SYSTEM_PROMPT) -> str:
    """The prompt text of a single-turn record (what :func:`prompt_ids` tokenizes), for
    reading and for training a tokenizer on the template's text."""
    if record.history:
        raise ValueError("render_prompt shows single-turn prompts; use prompt_ids for a conversation")
    system = _system(record, system_prompt)
    template = resolve_template(template, tokenizer)
    if template in ("alpaca", "llama2-chat"):
        return _string_prompt(template, record.request, system, True, record)
    return "".join(text for text, _ in _chat_texts(tokenizer, record, system, answered=False))


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer's chat template renders right after an answer
    (``<|eot_id|>``, ``<|im_end|>``): generation stops there too. [] without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    probe = Record("Hi", output="Hello")
    try:
        *_, (end, _) = _chat_texts(tokenizer, probe, "", answered=True)
    except AsftError:
        return []
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    after = end[end.find("Hello") + len("Hello"):]
    return [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special]
