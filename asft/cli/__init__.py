"""``asft`` command line. Each command module registers itself on the shared app;
heavy libraries are imported inside the commands so ``--help`` stays fast."""

from __future__ import annotations

import sys

from asft.cli.app import app
from asft.errors import AsftError

# Command modules (import order is the order of ``asft --help``).
from asft.cli import sandbox  # noqa: E402,F401
from asft.cli import screen  # noqa: E402,F401
from asft.cli import evaluate  # noqa: E402,F401
from asft.cli import direction  # noqa: E402,F401
from asft.cli import train  # noqa: E402,F401
from asft.cli import landscape  # noqa: E402,F401
from asft.cli import inspect  # noqa: E402,F401
from asft.cli import pipeline  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except AsftError as exc:
        print(f"asft: error: {exc}", file=sys.stderr)
        sys.exit(2)


__all__ = ["app", "main"]
