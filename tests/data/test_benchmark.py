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


@pytest.mark.slow
def test_the_default_names_most_caught_held_out_rows_by_the_category_they_were_written_for():
    """The category head's names on rows it never trained on, the writers' own categories as truth:
    0.83 of the caught rows over every held-out file when it was introduced, where the nearest
    harm description in the untuned encoder's space named 0.62 (RESULTS.md, session 17)."""
    from benchmarks.screening import HELD_OUT, load_held_out, named_right, timed

    screener, right, caught = _default(), 0.0, 0
    for name in HELD_OUT:
        records, _, categories = load_held_out(name, categories=True)
        flagged, _, _, named = timed(screener, records)
        one = named_right(flagged, named, categories)
        right, caught = right + one["named_right"] * one["caught"], caught + one["caught"]
    assert caught > 400 and right / caught >= 0.78
