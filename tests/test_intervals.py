"""95% intervals: Wilson for rates and the t-interval for mean scores, against values worked out by hand."""

import math

import pytest

from safelatent.evaluation.intervals import (
    fisher_exact,
    mean_interval,
    normal_quantile,
    student_t_quantile,
    wilson_interval,
)


def test_wilson_interval_of_8_out_of_10_matches_the_textbook_value():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-4)
    assert high == pytest.approx(0.9433, abs=5e-4)


def test_wilson_interval_at_the_edges_stays_inside_zero_one_and_is_exact_there():
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=5e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=5e-4), 1.0)
    assert wilson_interval(1, 1)[1] == 1.0


def test_wilson_interval_with_no_trials_is_the_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_narrows_with_more_trials_and_is_symmetric_in_success_and_failure():
    small, large = wilson_interval(5, 10), wilson_interval(500, 1000)
    assert large[1] - large[0] < small[1] - small[0]
    low, high = wilson_interval(3, 10)
    mirrored_low, mirrored_high = wilson_interval(7, 10)
    assert (low, high) == pytest.approx((1 - mirrored_high, 1 - mirrored_low))


@pytest.mark.parametrize(("successes", "trials"), [(-1, 3), (4, 3), (0, -1)])
def test_wilson_interval_rejects_impossible_counts(successes, trials):
    with pytest.raises(ValueError, match="0 <= successes <= trials"):
        wilson_interval(successes, trials)


@pytest.mark.parametrize(("degrees_of_freedom", "expected"), [
    (1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423), (1000, 1.9623),
])
def test_student_t_quantile_matches_the_t_table(degrees_of_freedom, expected):
    assert student_t_quantile(degrees_of_freedom) == pytest.approx(expected, abs=1e-4)


def test_normal_quantile_is_1_96_for_95_percent():
    assert normal_quantile() == pytest.approx(1.95996, abs=1e-5)


def test_mean_interval_is_the_t_interval():
    # Mean 8, sample sd sqrt(2.5), t(4) = 2.7764: 8 ± 2.7764 * sqrt(2.5 / 5).
    low, high = mean_interval([6, 7, 8, 9, 10], 1, 10)
    half = 2.776445 * math.sqrt(2.5 / 5)
    assert (low, high) == pytest.approx((8 - half, 8 + half), abs=1e-5)


def test_mean_interval_is_clipped_to_the_score_range():
    low, high = mean_interval([1, 10], 1, 10)
    assert (low, high) == (1.0, 10.0)
    assert mean_interval([0.9, 1.0, 1.0], 0, 1)[1] == 1.0


def test_mean_interval_of_too_few_values_is_the_whole_range_and_equal_values_give_zero_width():
    assert mean_interval([], 1, 10) == (1.0, 10.0)
    assert mean_interval([7.0], 1, 10) == (1.0, 10.0)
    assert mean_interval([7.0, 7.0, 7.0], 1, 10) == (7.0, 7.0)


def test_mean_interval_rejects_scores_outside_their_range():
    with pytest.raises(ValueError, match=r"scores must lie in \[1, 10\]"):
        mean_interval([0.5, 3], 1, 10)


def test_confidence_must_be_a_probability():
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=95)


def test_fisher_exact_matches_the_hypergeometric_sums():
    # Fisher's tea taster: 3 of 4 cups right against 1 of 4; tables as or less likely: {3,1}, {4,0}, {1,3}, {0,4}.
    assert fisher_exact(3, 4, 1, 4) == pytest.approx((16 + 1 + 16 + 1) / 70)
    assert fisher_exact(6, 280, 1, 280) == pytest.approx(0.12265, abs=1e-5)  # 6 vs 1 harmful replies (docs/sls.md)
    assert fisher_exact(5, 10, 5, 10) == 1.0 and fisher_exact(0, 5, 0, 5) == 1.0
    assert fisher_exact(10, 10, 0, 10) == pytest.approx(2 / math.comb(20, 10))
    with pytest.raises(ValueError, match="within their totals"):
        fisher_exact(3, 2, 0, 5)
