"""``python -m benchmarks.gate_error_rates``: the safety gate's own error rates, simulated.

Per-prompt harmful verdicts are drawn for a champion at a known true harmful rate and a
candidate equal to it, 2 points worse or 5 points worse, on the same n prompts (verdicts of
the two models correlated through a Gaussian copula, as answers to the same prompts are),
and the gates run exactly as the pipeline runs them (``asft.gates.decide`` with per-prompt
outcomes, default margin 2 points and alpha 0.05). Printed per setting: how often the
candidate was promoted. For "2 / 5 points worse" that is the false-promotion rate (goal
<= alpha); for "equal" it is the power.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.stats import norm

from asft.gates import EvalSummary, GateConfig, Outcomes, decide

SETTINGS = [(n, worse) for n in (250, 1000) for worse in (0.0, 2.0, 5.0)]


def _summary(flags: np.ndarray) -> EvalSummary:
    return EvalSummary(harmful_score=100.0 * flags.mean(), utility={"task": 100.0},
                       outcomes={"harmful": Outcomes.of(flags.tolist())}, protocol={"same": True})


def promotion_rate(n: int, worse_points: float, *, champion_rate: float = 0.05, correlation: float = 0.5,
                   trials: int = 1000, seed: int = 0) -> float:
    """Share of trials in which the candidate passes the harmful gates against the champion."""
    rng = np.random.default_rng(seed)
    config = GateConfig(max_harmful_score=100.0)
    cuts = norm.ppf([champion_rate, champion_rate + worse_points / 100.0])
    promoted = 0
    for _ in range(trials):
        latent = rng.multivariate_normal([0.0, 0.0], [[1.0, correlation], [correlation, 1.0]], size=n)
        champion, candidate = latent[:, 0] < cuts[0], latent[:, 1] < cuts[1]
        promoted += decide(_summary(candidate), _summary(champion), config).passed
    return promoted / trials


def table(trials: int, correlation: float = 0.5) -> list[dict]:
    return [{"n": n, "candidate": "equal" if worse == 0 else f"{worse:g} points worse",
             "promoted": promotion_rate(n, worse, correlation=correlation, trials=trials),
             "measures": "power" if worse == 0 else "false-promotion rate (goal <= 0.05)"}
            for n, worse in SETTINGS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--correlation", type=float, default=0.5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = table(args.trials, args.correlation)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"champion harmful rate 5 %, margin 2 points, alpha 0.05, correlation {args.correlation}, "
          f"{args.trials} trials per row")
    print("| n | candidate | promoted | measures |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']} | {row['candidate']} | {row['promoted']:.3f} | {row['measures']} |")


if __name__ == "__main__":
    main()
