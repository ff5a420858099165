"""PNG figures: training curves, before/after evaluation, the gate decision, the landscape, the
sandbox table's figures against the harmful ratio.

Object-oriented matplotlib with the Agg canvas: no pyplot, no global backend switch, no
display needed, figures are freed with their last reference.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from asft import storage
from asft.errors import AsftError
from asft.gates import EvalSummary


def _number(row: Mapping[str, Any], key: str, index: int) -> float:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AsftError(f"metrics row {index}: {key}={value!r} is not a number; write numbers to metrics.jsonl")
    return float(value)


def training_curves(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss (and, where rows carry it, the AsFT penalty) against step, from metrics.jsonl rows.

    Rows need ``step`` and ``loss``; ``penalty`` is optional per row (absent or null). Non-finite values
    stay in the data and show as gaps, counted in the panel title, so divergence is visible.
    """
    if not rows:
        raise AsftError("no metrics rows to plot; training wrote an empty metrics.jsonl")
    for i, row in enumerate(rows):
        missing = [k for k in ("step", "loss") if k not in row]
        if missing:
            raise AsftError(f"metrics row {i}: missing {', '.join(missing)}; each row needs step and loss")
    series = {"loss": [(_number(r, "step", i), _number(r, "loss", i)) for i, r in enumerate(rows)]}
    penalty = [(_number(r, "step", i), _number(r, "penalty", i)) for i, r in enumerate(rows)
               if r.get("penalty") is not None]  # SFT rows carry no (or a null) penalty
    if penalty:
        series["penalty"] = penalty

    fig = Figure(figsize=(7, 2.6 * len(series)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, points) in zip(axes, series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, label=name)
        bad = sum(not math.isfinite(v) for v in values)
        ax.set_title(name + (f" ({bad} non-finite points not drawn)" if bad else ""))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    return fig


def eval_comparison(before: EvalSummary, after: EvalSummary, labels: tuple[str, str] = ("before", "after")) -> Figure:
    """Harmful score with its 95% CI (and over-refusal, when measured), and utility per task,
    side by side for two evaluations."""
    tasks = sorted(set(before.utility) | set(after.utility))
    fig = Figure(figsize=(4 + 1.2 * max(len(tasks), 1), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    harm_ax, util_ax = fig.subplots(1, 2, width_ratios=[1.6, max(len(tasks), 1)])
    width = 0.38
    for offset, label, result in ((-width / 2, labels[0], before), (width / 2, labels[1], after)):
        hs = result.harmful_score
        error = None
        if result.harmful_score_ci95 is not None:
            low, high = result.harmful_score_ci95
            error = [[max(hs - low, 0.0)], [max(high - hs, 0.0)]]
        harm_ax.bar_label(harm_ax.bar([offset], [hs], width, yerr=error, capsize=4, label=label), fmt="%.1f")
        if result.over_refusal is not None:
            refusal = _rate_with_ci(result, "over_refusal")
            harm_ax.bar_label(harm_ax.bar([1 + offset], [refusal[0]], width, color=f"C{int(offset > 0)}",
                                          yerr=[[refusal[0] - refusal[1]], [refusal[2] - refusal[0]]], capsize=4),
                              fmt="%.1f")
        # A task one side lacks is drawn as an empty slot and named in the tick label.
        bars = util_ax.bar([i + offset for i in range(len(tasks))], [result.utility.get(t, 0.0) for t in tasks], width)
        util_ax.bar_label(bars, [f"{result.utility[t]:.1f}" if t in result.utility else "n/a" for t in tasks])
    measured = before.over_refusal is not None or after.over_refusal is not None
    harm_ax.set_xticks([0, 1] if measured else [0], ["harmful", "over-refusal"] if measured else ["harmful"])
    harm_ax.set_ylabel("% of answers")
    harm_ax.set_ylim(0, 100)
    util_ax.set_xticks(
        range(len(tasks)),
        [t if t in before.utility and t in after.utility else f"{t}\n(missing in one)" for t in tasks],
    )
    util_ax.set_ylabel("utility (%)")
    util_ax.set_ylim(0, 100)
    fig.legend(loc="outside upper center", ncols=2)
    for ax in (harm_ax, util_ax):
        ax.grid(axis="y", alpha=0.3)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Figure, uri: str | os.PathLike, dpi: int = 100) -> str:
    """Render to PNG and write it atomically to ``uri`` (any storage URI); returns the URI."""
    storage.write_bytes(uri, png_bytes(fig, dpi))
    return str(uri)


def _rate_with_ci(summary: EvalSummary, key: str) -> tuple[float, float, float] | None:
    """(rate, low, high) in % of a gated measure; the interval from its outcomes when known."""
    from asft.statistics import wilson_interval

    if key.startswith("utility:"):
        value = summary.utility.get(key.removeprefix("utility:"))
    elif key.startswith("harmful:"):
        value = summary.harmful_by_category.get(key.removeprefix("harmful:"))
    else:
        value = summary.harmful_score if key == "harmful" else summary.over_refusal
    if value is None:
        return None
    outcomes = summary.outcomes.get(key)
    if outcomes is None:
        low, high = summary.harmful_score_ci95 if key == "harmful" and summary.harmful_score_ci95 else (value, value)
        return value, low, high
    low, high = (100 * x for x in wilson_interval(outcomes.count, outcomes.n))
    low, high = (100 - high, 100 - low) if key.startswith("utility:") else (low, high)
    return value, min(low, value), max(high, value)  # at 0 or n the bound lands a rounding error off the point


def decision_figure(candidate: EvalSummary, champion: EvalSummary | None) -> Figure:
    """Candidate vs champion with 95% intervals: harm and over-refusal, utility per task,
    harmful score per category."""
    panels = {"safety (lower is better)": ["harmful", "over_refusal"],
              "utility (higher is better)": [f"utility:{t}" for t in sorted(candidate.utility)],
              "harmful score per category": [f"harmful:{c}" for c in sorted(candidate.harmful_by_category)]}
    panels = {title: keys for title, keys in panels.items() if keys}
    fig = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    sides = [("candidate", candidate)] + ([("champion", champion)] if champion is not None else [])
    width = 0.8 / len(sides)
    for ax, (title, keys) in zip(axes, panels.items()):
        top = 0.0
        for i, (label, summary) in enumerate(sides):
            shown = [(j, _rate_with_ci(summary, key)) for j, key in enumerate(keys)]
            shown = [(j, r) for j, r in shown if r is not None]
            xs = [j + (i - (len(sides) - 1) / 2) * width for j, _ in shown]
            values = [r[0] for _, r in shown]
            errors = [[r[0] - r[1] for _, r in shown], [r[2] - r[0] for _, r in shown]]
            bars = ax.bar(xs, values, width, yerr=errors, capsize=3, label=label if ax is axes[0] else None)
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
            top = max([top] + [r[2] for _, r in shown])
        ax.set_xticks(range(len(keys)), [k.split(":", 1)[-1].replace("_", "-") for k in keys], rotation=20)
        ax.set_ylim(0, min(105.0, 1.25 * top + 2.0))  # small safety rates stay readable
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside upper center", ncols=len(sides))
    return fig


# The landscape's coordinates (grid.csv columns) and what each axis is.
LANDSCAPE_AXES = {"a": "a: along the alignment direction V",
                  "b": "b: along a random direction orthogonal to V",
                  "s": "s: along the SFT update, orthogonal to V"}


def _coordinates(row: Mapping[str, Any]) -> list[str]:
    return [key for key in LANDSCAPE_AXES if key in row]


def slice_rows(rows: list[dict], axis: str) -> list[dict]:
    """The landscape points along one axis (every other coordinate at 0), in order."""
    others = [key for key in _coordinates(rows[0]) if key != axis]
    return sorted((r for r in rows if all(r[key] == 0.0 for key in others)), key=lambda r: r[axis])


def landscape_slices(rows: list[dict], threshold: float, marks: Mapping[str, Mapping[str, float]],
                     basins: Mapping[str, Mapping[str, Any]] | None = None):
    """Harmful score and refusal rate along each axis of the rows (the others at 0), with the
    threshold; ``marks``: name -> coordinates (absent ones are 0), drawn where they sit on each
    axis; ``basins``: axis -> its basin (``width``, ``*_censored``), shown in the panel title."""
    axes_keys = _coordinates(rows[0])
    fig = Figure(figsize=(5 * len(axes_keys), 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(axes_keys), sharey=True, squeeze=False)[0]
    for ax, axis in zip(axes, axes_keys):
        line = slice_rows(rows, axis)
        xs = [r[axis] for r in line]
        ax.plot(xs, [r["harmful_score"] for r in line], marker="o", label="harmful score")
        ax.plot(xs, [r["refusal_rate"] for r in line], marker=".", linestyle="--", label="refusal rate")
        for key in sorted(k for k in line[0] if k.startswith("utility_")):
            ax.plot(xs, [r[key] for r in line], marker="s", linestyle=":", label=key.replace("_", " "))
        ax.axhline(threshold, color="grey", linewidth=0.8, label=f"threshold {threshold:g}%")
        for name, point in marks.items():
            coordinate = point.get(axis, 0.0)
            # the aligned model is every slice's centre; others are drawn where they sit visibly off it
            off_centre = abs(coordinate) > 1e-3 * (max(xs) - min(xs))
            if (name == "aligned" or off_centre) and min(xs) <= coordinate <= max(xs):
                ax.axvline(coordinate, color="black", linestyle=":", linewidth=0.8)
                ax.annotate(name, (coordinate, 95), rotation=90, fontsize=7, ha="right", va="top")
        ax.set_xlabel(LANDSCAPE_AXES[axis] + " (units of ||V||)", fontsize=9)
        if basins and basins.get(axis):
            basin = basins[axis]
            at_least = "≥ " if basin["low_censored"] or basin["high_censored"] else ""  # the grid ends inside the basin
            ax.set_title(f"basin width {at_least}{basin['width']:.2f} x ||V||", fontsize=9)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of answers")
    axes[0].legend(fontsize=7, loc="center left")
    return fig


def landscape_grid(rows: list[dict], threshold: float, marks: Mapping[str, Mapping[str, float]]):
    """Heatmap of the harmful score over a and the axis across V (b or s), the basin's
    threshold contour and the marked models."""
    across = next(key for key in _coordinates(rows[0]) if key != "a")
    a_values = sorted({r["a"] for r in rows})
    c_values = sorted({r[across] for r in rows})
    score = {(r["a"], r[across]): r["harmful_score"] for r in rows}
    Z = [[score[(a, c)] for a in a_values] for c in c_values]
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    mesh = ax.pcolormesh(a_values, c_values, Z, shading="nearest", cmap="RdYlGn_r", vmin=0, vmax=100)
    fig.colorbar(mesh, ax=ax, label="harmful score (%)")
    if len(a_values) > 1 and len(c_values) > 1:
        ax.contour(a_values, c_values, Z, levels=[threshold], colors="black", linewidths=1)
    for name, point in marks.items():
        a, c = point.get("a", 0.0), point.get(across, 0.0)
        ax.plot([a], [c], marker="*" if name == "aligned" else "o", color="black", markersize=9)
        # aligned below its marker, the others above, so nearby labels do not overlap
        ax.annotate(name, (a, c), textcoords="offset points", xytext=(5, -12 if name == "aligned" else 6), fontsize=8)
    ax.set_xlabel(LANDSCAPE_AXES["a"] + " (units of ||V||)")
    ax.set_ylabel(LANDSCAPE_AXES[across] + " (units of ||V||)")
    ax.set_title(f"harmful score; contour at {threshold:g}%", fontsize=9)
    return fig


def ratio_sweep(cells: Sequence[Mapping[str, Any]], measures: Mapping[str, str],
                reference: Mapping[str, Mapping[str, float]] | None = None) -> Figure:
    """Per measure a panel: its mean over seeds against the harmful ratio p, one line per
    method, error bars ± one sd (none with a single seed); ``reference`` models (name ->
    measure -> value) as horizontal lines.

    ``cells``: ``{"method", "p", measure: {"mean", "sd"}}`` rows (the sandbox table's). The
    methods are drawn a little apart along p so that equal values stay visible.
    """
    if not cells:
        raise AsftError("no table cells to plot; run at least one method at one p")
    methods = list(dict.fromkeys(c["method"] for c in cells))
    ratios = sorted({c["p"] for c in cells})
    gap = min((b - a for a, b in itertools.pairwise(ratios)), default=0.1)
    fig = Figure(figsize=(5.5 * len(measures), 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    for ax, (key, label) in zip(axes, measures.items()):
        for i, method in enumerate(methods):
            line = sorted((c for c in cells if c["method"] == method), key=lambda c: c["p"])
            offset = (i - (len(methods) - 1) / 2) * 0.12 * gap / max(len(methods) - 1, 1)
            sds = [c[key]["sd"] for c in line]
            ax.errorbar([c["p"] + offset for c in line], [c[key]["mean"] for c in line],
                        yerr=None if all(sd is None for sd in sds) else [sd or 0.0 for sd in sds],
                        marker="o", capsize=3, label=method)
        for j, (name, values) in enumerate((reference or {}).items()):
            if key in values:
                ax.axhline(values[key], color="grey", linestyle=("--", ":", "-.")[j % 3], linewidth=0.9, label=name)
        ax.set_xticks(ratios, [f"{p:g}" for p in ratios])
        ax.set_xlabel("harmful ratio p of the fine-tuning mixture")
        ax.set_ylabel(label)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig
