"""The typer app every command module registers on, and the shared output helpers."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

app = typer.Typer(
    rich_markup_mode=None,  # plain help: long generated option lists stay readable
    help="Safety-preserving fine-tuning (AsFT): direction, screening, training, evaluation, registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JSON_OPTION = typer.Option(False, "--json", help="Print a JSON summary on stdout (progress goes to stderr).")


def emit(summary: dict[str, Any], as_json: bool) -> None:
    """The command's result: JSON on stdout with --json, else readable key: value lines."""
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    for key, value in summary.items():
        shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
        print(f"{key}: {shown}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
