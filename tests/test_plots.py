"""PNG figures: the plotted data equals the input; files are real PNGs; bad rows fail clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.image import imread

from asft import plots
from asft.errors import AsftError
from asft.gates import EvalSummary


def rows(n=20, penalty=True):
    out = []
    for step in range(0, n * 5, 5):
        row = {"step": step, "loss": 2.0 / (1 + step), "lr": 1e-4}
        if penalty:
            row["penalty"] = 0.1 * step
        out.append(row)
    return out


def test_training_curves_plot_loss_and_penalty_against_step(tmp_path):
    data = rows()
    fig = plots.training_curves(data)
    loss_ax, penalty_ax = fig.axes
    np.testing.assert_allclose(loss_ax.lines[0].get_xdata(), [r["step"] for r in data])
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [r["loss"] for r in data])
    np.testing.assert_allclose(penalty_ax.lines[0].get_ydata(), [r["penalty"] for r in data])
    assert penalty_ax.get_xlabel() == "step"
    out = plots.save_png(fig, tmp_path / "plots" / "curves.png")
    image = imread(out)
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert image.shape[:2] == (2 * 260, 700)  # figsize (7, 2.6 per panel) at 100 dpi


def test_sft_rows_without_penalty_give_one_panel_and_nan_is_counted():
    data = rows(penalty=False)
    data[3]["loss"] = math.nan
    data[4]["penalty"] = None
    fig = plots.training_curves(data)
    assert len(fig.axes) == 1
    assert fig.axes[0].get_title() == "loss (1 non-finite points not drawn)"


@pytest.mark.parametrize(
    "bad, message",
    [([], "empty metrics.jsonl"), ([{"step": 0}], "row 0: missing loss"),
     ([{"step": 0, "loss": 1.0}, {"loss": 1.0}], "row 1: missing step"),
     ([{"step": 0, "loss": "1.0"}], "loss='1.0' is not a number"), ([{"step": 0, "loss": 1.0, "penalty": True}], "penalty")],
)
def test_bad_rows_fail_clearly(bad, message):
    with pytest.raises(AsftError, match=message):
        plots.training_curves(bad)


def test_eval_comparison_bars_and_confidence_interval(tmp_path):
    before = EvalSummary(harmful_score=40.0, harmful_score_ci95=(34.0, 47.0), utility={"gsm8k": 20.0, "sst2": 90.0})
    after = EvalSummary(harmful_score=12.0, harmful_score_ci95=(8.0, 16.0), utility={"gsm8k": 26.0, "agnews": 80.0})
    fig = plots.eval_comparison(before, after, labels=("sft", "asft"))
    harm_ax, util_ax = fig.axes
    assert [p.get_height() for p in harm_ax.patches] == [40.0, 12.0]
    # Utility bars: before then after, tasks sorted (agnews, gsm8k, sst2); a missing task is 0 and named.
    assert [p.get_height() for p in util_ax.patches] == [0.0, 20.0, 90.0, 80.0, 26.0, 0.0]
    assert [t.get_text() for t in util_ax.get_xticklabels()] == ["agnews\n(missing in one)", "gsm8k", "sst2\n(missing in one)"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["sft", "asft"]
    assert [t.get_text() for t in util_ax.texts] == ["n/a", "20.0", "90.0", "80.0", "26.0", "n/a"]
    # Error bar ends at the CI bounds.
    caps = [line for bars in harm_ax.containers if hasattr(bars, "has_yerr") for line in bars.lines[1]]
    ends = sorted(float(y) for line in caps for y in line.get_ydata())
    assert ends == [8.0, 16.0, 34.0, 47.0]
    out = plots.save_png(fig, tmp_path / "eval.png")
    assert imread(out).ndim == 3


@pytest.mark.parametrize("n, bad", [(11, 0), (6, 6), (50, 0)])
def test_decision_and_comparison_figures_at_zero_and_all_bad(n, bad):
    # The Wilson bound at 0 or n lands a rounding error off the point: error bars must not go negative.
    from asft.gates import Outcomes
    from asft.plots import decision_figure, eval_comparison

    flags = [i < bad for i in range(n)]
    rate = 100.0 * bad / n
    summary = EvalSummary(harmful_score=rate, over_refusal=rate, utility={"sst2": 100.0 - rate},
                          harmful_by_category={"x": rate},
                          outcomes={key: Outcomes.of(flags) for key in ("harmful", "over_refusal", "harmful:x")}
                          | {"utility:sst2": Outcomes.of(flags)})
    for fig in (decision_figure(summary, summary), eval_comparison(summary, summary)):
        assert fig.axes and all(p.get_height() >= 0 for ax in fig.axes for p in ax.patches)
