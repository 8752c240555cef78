"""95% intervals for evaluation figures: the Wilson score interval for rates, a t-interval for mean scores; and
Fisher's exact test for two rates.

Rates (k successes in n trials, p̂ = k/n, z the normal quantile, 1.96 for 95%):

    centre = (p̂ + z²/2n) / (1 + z²/n)
    half   = z·sqrt(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n)
    Wilson = [centre − half, centre + half]  (always inside [0, 1], sensible at k = 0 and k = n)

Means of bounded scores (judge scores 1-10, win probabilities 0-1), x̄ the mean, s the sample standard
deviation (n − 1 in the denominator), t the Student-t quantile with n − 1 degrees of freedom:

    t-interval = [x̄ − t·s/√n, x̄ + t·s/√n], clipped to the score's range.

The t quantile is found by bisection on the exact Student-t distribution function for integer degrees of
freedom (Abramowitz & Stegun 26.7.3-4), so no statistics package is needed and the result is deterministic.

Little data, stated plainly: with n = 0 nothing is known and both intervals are the whole range
([0, 1] for rates, [low, high] for means); a mean of one value is also the whole range, since one value
says nothing about spread. Equal values (s = 0, n ≥ 2) give a zero-width interval, as the t-interval does.
"""

import functools
import math
from collections.abc import Sequence
from statistics import NormalDist

CONFIDENCE = 0.95


def normal_quantile(confidence: float = CONFIDENCE) -> float:
    """z such that a standard normal lies within ±z with probability `confidence` (1.96 for 0.95)."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a rate of `successes` out of `trials`; (0, 1) when trials is 0."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"a rate needs 0 <= successes <= trials, got successes={successes}, trials={trials}")
    if trials == 0:
        return 0.0, 1.0
    z = normal_quantile(confidence)
    rate = successes / trials
    shrink = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / shrink
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / shrink
    # At k = 0 and k = n the bounds are exactly 0 and 1; rounding would leave 1e-17 instead.
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == trials else min(1.0, centre + half)
    return lower, upper


def mean_interval(values: Sequence[float], low: float, high: float,
                  confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval for the mean of values that lie in [low, high], clipped to that range."""
    if low > high:
        raise ValueError(f"the range of a score needs low <= high, got low={low}, high={high}")
    outside = [value for value in values if not low <= value <= high]
    if outside:
        raise ValueError(f"scores must lie in [{low:g}, {high:g}]; found {outside[:3]}")
    count = len(values)
    if count < 2:
        return low, high
    mean = math.fsum(values) / count
    spread = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (count - 1))
    half = student_t_quantile(count - 1, confidence) * spread / math.sqrt(count)
    return max(low, mean - half), min(high, mean + half)


@functools.lru_cache(maxsize=256)
def student_t_quantile(degrees_of_freedom: int, confidence: float = CONFIDENCE) -> float:
    """t such that Student's t with these degrees of freedom lies within ±t with probability `confidence`."""
    _check_confidence(confidence)
    if degrees_of_freedom < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {degrees_of_freedom}")
    lower, upper = 0.0, 1.0
    while _probability_within(upper, degrees_of_freedom) < confidence:
        lower, upper = upper, upper * 2
    for _ in range(200):
        middle = (lower + upper) / 2
        if _probability_within(middle, degrees_of_freedom) < confidence:
            lower = middle
        else:
            upper = middle
        if upper - lower < 1e-12:
            break
    return (lower + upper) / 2


def _probability_within(t: float, degrees_of_freedom: int) -> float:
    """P(|T| ≤ t) for Student's t: the finite series in θ = atan(t/√ν) of Abramowitz & Stegun 26.7.3-4."""
    theta = math.atan(t / math.sqrt(degrees_of_freedom))
    cosine, sine = math.cos(theta), math.sin(theta)
    cosine_squared = cosine * cosine
    series = 0.0
    if degrees_of_freedom % 2 == 1:
        # Odd ν: (2/π)·(θ + sinθ·Σ c_j cos^(2j+1)θ), powers up to ν − 2, c_0 = 1, c_{j+1} = c_j·(2j+2)/(2j+3).
        term, power = cosine, 1
        while power <= degrees_of_freedom - 2:
            series += term
            term *= cosine_squared * (power + 1) / (power + 2)
            power += 2
        return 2 / math.pi * (theta + sine * series)
    # Even ν: sinθ·Σ c_j cos^(2j)θ, powers up to ν − 2, c_0 = 1, c_{j+1} = c_j·(2j+1)/(2j+2).
    term, power = 1.0, 0
    while power <= degrees_of_freedom - 2:
        series += term
        term *= cosine_squared * (power + 1) / (power + 2)
        power += 2
    return sine * series


def fisher_exact(a: int, n_a: int, b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that a of n_a and b of n_b come from one rate.

    With the margins fixed, the count in the first group is hypergeometric; p sums the probabilities of every
    count no likelier than the one seen (the usual two-sided rule).
    """
    if not (0 <= a <= n_a and 0 <= b <= n_b):
        raise ValueError(f"counts must lie within their totals, got {a} of {n_a} and {b} of {n_b}")
    total, column = n_a + n_b, a + b

    def probability(x: int) -> float:
        return math.comb(n_a, x) * math.comb(n_b, column - x) / math.comb(total, column)

    seen = probability(a)
    counts = range(max(0, column - n_b), min(n_a, column) + 1)
    return min(1.0, sum(p for p in map(probability, counts) if p <= seen * (1 + 1e-9)))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1 (0.95 for a 95% interval), got {confidence}")
