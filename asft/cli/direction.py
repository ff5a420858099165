"""``asft direction``: the alignment direction V = W_aligned - W_base, streamed shard by shard."""

from __future__ import annotations

import typer

from asft.cli.app import JSON_OPTION, app, emit, progress, validated


@app.command("direction")
def direction(
    aligned: str = typer.Option(..., "--aligned", help="Aligned checkpoint folder or URI (safetensors)"),
    base: str = typer.Option(..., "--base", help="Base checkpoint folder or URI the aligned model came from"),
    out: str = typer.Option(..., "--out", help="Output folder or URI"),
    target_modules: str = typer.Option("q_proj,v_proj", "--target-modules", help="Comma-separated module-name suffixes"),
    target_regex: str = typer.Option(None, "--target-regex", help="Full-match regex on module names (replaces --target-modules)"),
    dtype: str = typer.Option("float32", "--dtype", help="Stored dtype of V: float32 | bfloat16 | float16"),
    aligned_sha256: str = typer.Option(None, "--aligned-sha256",
                                       help="The aligned checkpoint's hash if already known (else computed)"),
    base_sha256: str = typer.Option(None, "--base-sha256", help="The base checkpoint's hash if already known (else computed)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Extract V = W_aligned - W_base for the target modules into direction.safetensors + manifest.json."""
    from asft.direction import DirectionConfig, extract_direction

    config = validated(DirectionConfig, aligned=aligned, base=base, out=out, dtype=dtype, target_regex=target_regex,
                       target_modules=[t.strip() for t in target_modules.split(",") if t.strip()],
                       aligned_sha256=aligned_sha256, base_sha256=base_sha256)
    manifest = extract_direction(config, progress=progress)
    emit({"direction": out, **{k: manifest[k] for k in (
        "direction_sha256", "dtype", "seconds", "rss_growth_mb", "peak_rss_mb", "largest_tensor_mb")},
        "modules": len(manifest["modules"])}, as_json)
