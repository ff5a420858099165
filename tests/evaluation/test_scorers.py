import pytest

from asft.evaluation.scorers import extract_number, make_scorer
from asft.statistics import wilson_interval


@pytest.mark.parametrize("k,n,low,high", [
    (5, 10, 0.2365896, 0.7634104),
    (0, 10, 0.0, 0.2775402),
    (10, 10, 0.7224598, 1.0),
    (25, 250, 0.0686545, 0.1434526),
    (81, 263, 0.2552876, 0.3662107),
])
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-6) and hi == pytest.approx(high, abs=1e-6)


def test_wilson_interval_with_exact_z_matches_reference():
    # scipy.stats.binomtest(5, 10).proportion_ci(method="wilson") with z = 1.959963984540054
    lo, hi = wilson_interval(5, 10, z=1.959963984540054)
    assert (lo, hi) == pytest.approx((0.236593090512564, 0.7634069094874361), abs=1e-12)


def test_wilson_interval_rejects_impossible_counts():
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)


@pytest.mark.parametrize("answer,gold,ok", [
    ("positive", "positive", True), ("  Positive.\n", "positive", True), ("NEGATIVE", "negative", True),
    ("negative", "positive", False), ("The sentiment is positive", "positive", False), ("", "negative", False),
])
def test_sst2_is_exact_label_word(answer, gold, ok):
    assert make_scorer("sst2")(answer, gold) is ok


@pytest.mark.parametrize("answer,gold,ok", [
    ("Sports", "Sports", True), ("sci/tech", "Sci/Tech", True), ("The category is World.", "World", True),
    ("Business", "World", False), ("World or Sports", "World", False), ("Worldwide news", "World", False),
    ("Tech", "Sci/Tech", False),
])
def test_agnews_is_case_insensitive_label_match(answer, gold, ok):
    assert make_scorer("agnews")(answer, gold) is ok


@pytest.mark.parametrize("text,number", [
    ("3 + 4 = 7 apples.\nThe final answer is: 7", 7.0),
    ("The final answer is:  1,234 dollars, not 5", 1234.0),
    ("first 3 then 12.5", 12.5),
    ("we owe -4", -4.0),
    ("The final answer is: 8. Check: 2 + 6 = 8, and 10 is wrong", 8.0),
    ("no digits here", None),
])
def test_extract_number(text, number):
    assert extract_number(text) == number


def test_gsm8k_compares_numbers():
    score = make_scorer("gsm8k")
    gold = "There were 175 - 35 = <<175-35=140>>140 rubies.\nThe final answer is:  595"
    assert score("The final answer is: 595", gold)
    assert score("So 595.0 gems", gold)
    assert not score("The final answer is: 594, not 595", gold)
    assert not score("I do not know", gold)
    assert score("The final answer is: 1,000", "The final answer is: 1000")


def test_exact_and_regex_scorers():
    assert make_scorer("exact")(" Paris \n", "Paris") and not make_scorer("exact")("paris", "Paris")
    grade = make_scorer(r"regex:answer=(\w+)")
    assert grade("the answer=blue, done", "blue")
    assert grade("so answer=blue", "gold says answer=blue")
    assert not grade("answer=red", "blue") and not grade("blue", "blue")


def test_unknown_task_and_bad_pattern_are_errors():
    with pytest.raises(ValueError, match="unknown utility task 'mmlu'"):
        make_scorer("mmlu")
    with pytest.raises(ValueError, match="invalid regular expression"):
        make_scorer("regex:(")
