"""``asft direction``: the alignment direction V = W_aligned - W_base, streamed shard by shard, or,
without a base, learned from a small harmful set (``--harmful-data``: V = W_aligned - W_harmful)."""

from __future__ import annotations

import typer

from asft.cli import config_args
from asft.cli.app import JSON_OPTION, app, emit, progress



@config_args.command(app, "direction", config_args.Spec("asft.direction:DirectionConfig", essentials=("aligned", "base", "harmful_data", "out")))
def direction(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Extract V = W_aligned - W_base (or learn V = W_aligned - W_harmful from --harmful-data) for the target
    modules into direction.safetensors + manifest.json."""
    from asft.direction import extract_direction

    config = config_args.build(ctx)
    manifest = extract_direction(config, progress=progress)
    emit({"direction": config.out, "source": manifest["source"], **{k: manifest[k] for k in (
        "direction_sha256", "dtype", "seconds", "rss_growth_mb", "peak_rss_mb", "largest_tensor_mb") if k in manifest},
        "modules": len(manifest["modules"])}, as_json)
