"""The statistics behind the gates: binomial intervals and paired non-inferiority tests.

A gate compares rates of "bad" outcomes (a harmful answer, a wrong utility answer). Two
kinds of question:

- **Is the rate at most a limit?** Use the upper confidence bound of the rate, not the
  point estimate (Wilson score bound, one-sided at level ``alpha``).
- **Is the candidate not worse than the champion by ``margin`` or more?** Both answered the
  same prompts, so the comparison is paired: only the discordant prompts carry information,
  ``b`` (candidate bad, champion good) and ``c`` (candidate good, champion bad). With
  ``delta = p_b - p_c`` the true difference of rates, the test is
  ``H0: delta >= margin`` (inferior) against ``H1: delta < margin`` (non-inferior).
  Given ``m = b + c`` discordant prompts, ``b ~ Binomial(m, pi)`` with
  ``pi = (psi + delta) / (2 psi)`` and ``psi`` the discordance rate. The p-value is the exact
  binomial ``P(X <= b)`` at the boundary ``delta = margin``, maximised over ``psi`` up to its
  ``1 - alpha/10`` upper confidence bound (hardest to reject at the largest plausible ``psi``),
  plus the ``alpha/10`` spent on that bound (Berger & Boos): exact given ``m`` and valid
  whatever ``psi`` is, instead of plugging in ``m / n`` (which promoted a worse candidate up
  to 17 % of the time at a 1 % base rate in our simulations). ``margin = 0`` is the exact
  one-sided McNemar test.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field
from scipy.stats import binom, norm


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials, as proportions in [0, 1].

    Unlike the normal approximation it stays inside [0, 1] and is not empty at k = 0 or n.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def upper_bound(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` upper confidence bound of a rate (Wilson score)."""
    return wilson_interval(k, n, z=float(norm.ppf(1 - alpha)))[1]


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Agreement of two judges' verdicts beyond chance (1 = always agree, 0 = chance)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two verdict lists of one non-zero length, got {len(a)} and {len(b)}")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    return 1.0 if chance == 1.0 else (observed - chance) / (1 - chance)


class PairedTest(BaseModel):
    """A paired non-inferiority comparison of two rates of bad outcomes on the same prompts."""

    n: int = Field(description="Prompts both answered.")
    worse: int = Field(description="Discordant prompts where the candidate is bad and the champion good (b).")
    better: int = Field(description="Discordant prompts where the candidate is good and the champion bad (c).")
    difference: float = Field(description="Observed difference of rates (b - c) / n, as a proportion.")
    margin: float = Field(description="Non-inferiority margin, as a proportion.")
    alpha: float = Field(description="Level of the one-sided test.")
    p_value: float = Field(description="P-value of H0: the candidate is worse by the margin or more.")
    non_inferior: bool = Field(description="H0 rejected at level alpha: the candidate may replace the champion.")


def paired_noninferiority(worse: int, better: int, n: int, margin: float, alpha: float) -> PairedTest:
    """The test of the module docstring (rates as proportions, ``margin`` in [0, 1))."""
    if n <= 0 or worse < 0 or better < 0 or worse + better > n:
        raise ValueError(f"need 0 <= worse + better <= n and n > 0, got {worse}, {better}, {n}")
    m = worse + better
    if margin == 0:  # pi = 1/2 whatever psi: the exact conditional test has no nuisance
        p_value = float(binom.cdf(worse, m, 0.5)) if m else 1.0
    else:
        gamma = alpha / 10  # the share of alpha spent on bounding psi (Berger & Boos 1994)
        psi_high = upper_bound(m, n, gamma)
        # H0 needs psi >= margin (delta <= psi); if the data rule that out, only gamma remains.
        worst = _p_difference_at_most(worse - better, n, np.linspace(margin, psi_high, 21), margin).max() \
            if psi_high >= margin else 0.0
        p_value = min(1.0, float(worst) + gamma)
    return PairedTest(n=n, worse=worse, better=better, difference=(worse - better) / n, margin=margin,
                      alpha=alpha, p_value=p_value, non_inferior=p_value < alpha)


def _p_difference_at_most(d: int, n: int, psi: np.ndarray, margin: float) -> np.ndarray:
    """P(B - C <= d) on the H0 boundary delta = margin, per discordance rate in ``psi``:
    M ~ Binomial(n, psi) discordant prompts, of which B ~ Binomial(M, (psi + margin) / (2 psi)) worse."""
    psi = psi[:, None]
    low, high = binom.ppf(1e-12, n, psi.min()), binom.ppf(1 - 1e-12, n, psi.max())  # M's mass outside: < 2e-12
    m = np.arange(int(low), int(high) + 1)[None, :]
    return (binom.pmf(m, n, psi) * binom.cdf(np.floor((m + d) / 2), m, (psi + margin) / (2 * psi))).sum(axis=1)
