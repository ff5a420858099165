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


def sweep_cells():
    # two methods at three p; sft over 3 seeds (sd), asft with one seed at p = 0.2 (sd None)
    return [{"method": "sft", "p": p, "harmful_score": {"mean": m, "sd": sd}, "finetune_accuracy": {"mean": 80.0, "sd": 1.0}}
            for p, m, sd in ((0.0, 10.0, 2.0), (0.1, 40.0, 5.0), (0.2, 70.0, 3.0))] + \
           [{"method": "asft", "p": p, "harmful_score": {"mean": m, "sd": sd}, "finetune_accuracy": {"mean": 78.0, "sd": None}}
            for p, m, sd in ((0.2, 20.0, None), (0.0, 5.0, 1.0), (0.1, 8.0, 0.5))]


def test_ratio_sweep_draws_means_with_sd_error_bars_per_method(tmp_path):
    fig = plots.ratio_sweep(sweep_cells(), {"harmful_score": "harmful score %", "finetune_accuracy": "fine-tune %"},
                            reference={"aligned": {"harmful_score": 3.0}})
    harm_ax, acc_ax = fig.axes
    sft, asft = harm_ax.containers
    np.testing.assert_allclose(np.asarray(sft.lines[0].get_ydata(), float), [10.0, 40.0, 70.0])
    np.testing.assert_allclose(np.asarray(asft.lines[0].get_ydata(), float), [5.0, 8.0, 20.0])  # sorted by p
    xs_sft, xs_asft = (np.asarray(c.lines[0].get_xdata(), float) for c in (sft, asft))
    np.testing.assert_allclose(np.asarray(xs_asft) - np.asarray(xs_sft), [0.012] * 3)  # drawn apart, same p
    np.testing.assert_allclose((np.asarray(xs_sft) + np.asarray(xs_asft)) / 2, [0.0, 0.1, 0.2])
    # error bars span mean ± sd; a missing sd (one seed) is a zero-length bar
    spans = [sorted(float(y) for y in segment[:, 1]) for segment in asft.lines[2][0].get_segments()]
    assert spans == [[4.0, 6.0], [7.5, 8.5], [20.0, 20.0]]
    assert [t.get_text() for t in harm_ax.get_legend().get_texts()] == ["aligned", "sft", "asft"]
    assert [float(y) for y in harm_ax.lines[-1].get_ydata()] == [3.0, 3.0]
    assert acc_ax.get_ylabel() == "fine-tune %" and [t.get_text() for t in acc_ax.get_xticklabels()] == ["0", "0.1", "0.2"]
    assert acc_ax.containers[1].lines[2] == ()  # asft's accuracy has no sd anywhere: no error bars
    assert imread(plots.save_png(fig, tmp_path / "table.png")).shape[:2] == (400, 1100)
    with pytest.raises(AsftError, match="no table cells"):
        plots.ratio_sweep([], {"harmful_score": "x"})


def landscape_rows():
    rows = []
    for key in ("a", "b", "s"):
        for x in (-1.0, 0.0, 1.0):
            if key != "a" and x == 0.0:
                continue
            point = {"a": 0.0, "b": 0.0, "s": 0.0, key: x}
            rows.append({**point, "harmful_score": 50 + 10 * x * ("abs".index(key) + 1), "refusal_rate": 40.0})
    return rows


def test_landscape_slices_draw_one_panel_per_axis_with_its_own_slice():
    rows = landscape_rows()
    marks = {"aligned": {}, "base (a=-1)": {"a": -1.0}, "fine-tuned": {"a": 0.3, "b": 0.2, "s": 1e-7}}
    basins = {"a": {"width": 1.25, "low_censored": False, "high_censored": False},
              "b": {"width": 2.0, "low_censored": True, "high_censored": True}, "s": None}
    fig = plots.landscape_slices(rows, 20.0, marks, basins)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["basin width 1.25 x ||V||", "basin width ≥ 2.00 x ||V||", ""]
    for ax, key, step in zip(fig.axes, "abs", (10, 20, 30)):
        harmful = ax.lines[0]
        np.testing.assert_allclose(harmful.get_xdata(), [-1.0, 0.0, 1.0])
        np.testing.assert_allclose(harmful.get_ydata(), [50 - step, 50, 50 + step])
        assert ax.get_xlabel().startswith(f"{key}: ")
    # marks: base only on the a panel, the fine-tuned model on a and b, not on s where it sits at ~0
    assert [[t.get_text() for t in ax.texts] for ax in fig.axes] == [
        ["aligned", "base (a=-1)", "fine-tuned"], ["aligned", "fine-tuned"], ["aligned"]]


def test_landscape_grid_over_the_sft_axis():
    rows = [{"a": a, "s": c, "harmful_score": 10 * a + c, "refusal_rate": 0.0} for c in (-1.0, 0.0, 1.0) for a in (-1.0, 0.0, 1.0)]
    fig = plots.landscape_grid(rows, 20.0, {"aligned": {}, "fine-tuned": {"a": 0.5, "s": 0.25}})
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("s: along the SFT update")
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(3, 3), [[10 * a + c for a in (-1, 0, 1)] for c in (-1, 0, 1)])
    assert [tuple(line.get_xydata()[0]) for line in ax.lines] == [(0.0, 0.0), (0.5, 0.25)]
