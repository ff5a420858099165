"""``asft`` command line: the library's commands. Each command module registers itself on the
shared app; its options come from its config model (:mod:`asft.cli.config_args`), built only
when that command runs, and heavy libraries are imported inside the commands, so ``--help``
stays fast. The ``pipeline`` command (Prefect) belongs to the app layer: ``flows/cli.py``
builds the full ``asft`` app from this one."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from typer._click import exceptions as click  # typer's vendored click: its usage errors

from asft.cli.app import app
from asft.errors import AsftError

# Command modules (import order is the order of ``asft --help``).
from asft.cli import sandbox  # noqa: E402,F401
from asft.cli import screen  # noqa: E402,F401
from asft.cli import evaluate  # noqa: E402,F401
from asft.cli import direction  # noqa: E402,F401
from asft.cli import lox  # noqa: E402,F401
from asft.cli import train  # noqa: E402,F401
from asft.cli import landscape  # noqa: E402,F401
from asft.cli import inspect  # noqa: E402,F401


def fail(message: str) -> NoReturn:
    """The one way a bad input ends: one line on stderr, exit code 2."""
    print(f"asft: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    run(app)


def run(application: typer.Typer) -> None:
    """Run an ``asft`` app; every way it can fail ends in one ``asft: error:`` line, exit 2."""
    try:
        code = application(standalone_mode=False, prog_name="asft")  # click's usage errors come here instead of as a framed box
    except click.NoArgsIsHelpError as exc:
        fail(f"{exc.ctx.command_path} needs a command; see '{exc.ctx.command_path} --help'")
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "asft"
        fail(f"{_one_line(exc.format_message())}; see '{command} --help'")
    except click.ClickException as exc:
        fail(_one_line(exc.format_message()))
    except typer.Abort:
        fail("aborted")
    except AsftError as exc:
        fail(str(exc))
    sys.exit(code if isinstance(code, int) else 0)  # as click's standalone mode did


def _one_line(message: str) -> str:
    return " ".join(message.split()).rstrip(".")


__all__ = ["app", "fail", "main", "run"]
