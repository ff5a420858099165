"""``asft lox``: LoX, the aligned weights extrapolated along the top-k subspace of V, as a new checkpoint."""

from __future__ import annotations

import typer

from asft.cli import config_args
from asft.cli.app import JSON_OPTION, app, emit


@config_args.command(app, "lox", config_args.Spec("asft.lox:LoxConfig",
                                                  essentials=("aligned", "direction", "top_k", "alpha", "out")))
def lox(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Write W_aligned + alpha * (rank-k truncation of V) per direction module as a full checkpoint (LoX)."""
    from asft.lox import extrapolate

    config = config_args.build(ctx)
    manifest = extrapolate(config)
    emit({"checkpoint": config.out, "top_k": manifest["top_k"], "alpha": manifest["alpha"],
          "modules": len(manifest["modules"]), "seconds": manifest["seconds"]}, as_json)
