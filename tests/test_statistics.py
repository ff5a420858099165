"""Gate statistics: Wilson bounds, the paired non-inferiority test, and the gate's own error rates."""

from __future__ import annotations

import pytest
from scipy.stats import binom

from asft.statistics import paired_noninferiority, upper_bound, wilson_interval
from benchmarks.gate_error_rates import promotion_rate


def test_upper_bound_is_the_one_sided_wilson_bound():
    assert upper_bound(10, 250, 0.025) == pytest.approx(wilson_interval(10, 250)[1], rel=1e-3)
    assert 0.04 < upper_bound(10, 250, 0.05) < wilson_interval(10, 250)[1]
    assert upper_bound(0, 250, 0.05) > 0.0 and upper_bound(250, 250, 0.05) == 1.0


def test_margin_zero_is_the_exact_one_sided_mcnemar_test():
    test = paired_noninferiority(worse=3, better=12, n=250, margin=0.0, alpha=0.05)
    assert test.p_value == pytest.approx(binom.cdf(3, 15, 0.5))
    assert test.non_inferior and test.difference == pytest.approx(-9 / 250)
    assert not paired_noninferiority(worse=12, better=3, n=250, margin=0.0, alpha=0.05).non_inferior


def test_a_wider_margin_or_more_prompts_make_non_inferiority_easier_to_show():
    p = [paired_noninferiority(10, 10, 250, margin, 0.05).p_value for margin in (0.0, 0.02, 0.05)]
    assert p[0] > p[1] > p[2]
    assert paired_noninferiority(40, 40, 1000, 0.02, 0.05).p_value < paired_noninferiority(10, 10, 250, 0.02, 0.05).p_value
    # identical verdicts: a positive margin cannot be exceeded
    assert paired_noninferiority(0, 0, 250, 0.02, 0.05).non_inferior
    with pytest.raises(ValueError):
        paired_noninferiority(200, 100, 250, 0.02, 0.05)


@pytest.mark.parametrize("n", [250, 1000])
def test_the_gate_rarely_promotes_a_worse_candidate(n):
    # The README's table comes from `python -m benchmarks.gate_error_rates` (2000 trials).
    for worse in (2.0, 5.0):
        assert promotion_rate(n, worse, trials=400, seed=1) <= 0.05
    assert promotion_rate(n, 0.0, trials=400, seed=1) > 0.05  # and an equal one not never


def test_power_grows_with_the_number_of_prompts():
    assert promotion_rate(1000, 0.0, trials=300, seed=2) > promotion_rate(250, 0.0, trials=300, seed=2) + 0.15
