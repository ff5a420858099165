"""The screening targets on asft-bench (skips without ASFT_BENCH_DATA): the default screener
(tuned, behind its prefilter) and the zero-shot one (written for these task files) each reach
recall >= 0.95 at false-positive rate <= 0.03 on every training file."""

from __future__ import annotations

import pytest


def _default():
    from asft.data.screening.encoder import encoder_screener

    return encoder_screener()  # the tuned model behind its word prefilter, never fit on these files


def _zero_shot():
    from asft.data.screening.encoder import EncoderScreener

    return EncoderScreener()


@pytest.mark.slow
@pytest.mark.parametrize("make_screener", [_default, _zero_shot], ids=["default", "zero-shot"])
def test_screener_meets_targets_on_asft_bench(bench_data, make_screener):
    from asft.data.report import quality
    from benchmarks.screening import TRAINING_FILES, load

    screener = make_screener()
    for name in TRAINING_FILES:
        records, truth = load(bench_data, name)
        q = quality(truth, [r.flagged for r in screener.score(records)])
        assert q["false_positive_rate"] <= 0.03, (name, q)
        if any(truth):
            assert q["recall"] >= 0.95, (name, q)
