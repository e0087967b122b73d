"""The statistics of a readout, small enough to check by hand.

Decisions use one-sided confidence bounds on a difference compared with a tolerance
(non-inferiority in one direction, harm in the other), so that sample size is part of the
answer: a small sample gives wide bounds and therefore "inconclusive", never a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Difference:
    """`estimate` with one-sided bounds: each holds with probability 1 - alpha."""

    estimate: float
    low: float
    high: float
    p_value: float
    """The test named where the Difference is built; reported, not used to decide."""


def z_one_sided(alpha: float) -> float:
    return float(stats.norm.ppf(1.0 - alpha))


def wilson(successes: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion: sensible at 0 or n successes, unlike Wald."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_difference(x1: float, n1: float, x2: float, n2: float,
                          alpha: float) -> Difference:
    """p1 - p2 with Newcombe's hybrid score bounds (from two Wilson intervals).

    p_value: Fisher's exact test that the first proportion is larger (one-sided).
    """
    x1, n1, x2, n2 = round(x1), round(n1), round(x2), round(n2)
    x1, x2 = min(x1, n1), min(x2, n2)
    z = z_one_sided(alpha)
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    table = [[x1, n1 - x1], [x2, n2 - x2]]
    p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
    return Difference(d, low, high, p_value)


def histogram_variance(buckets: tuple[tuple[float, float], ...], count: float, mean: float,
                       lower: float = 0.0, upper: float = 1.0) -> float:
    """Sample variance of values in [lower, upper] known only through a histogram.

    Each bucket's values sit at its midpoint, plus the variance of a uniform spread across
    the bucket (width^2/12): an overestimate rather than an underestimate, so the tests err
    on the side of "inconclusive". Without usable buckets, the largest variance any
    distribution on [lower, upper] with that mean can have (Bhatia-Davis).
    """
    bound = (upper - mean) * (mean - lower)
    if count < 2:
        return bound
    total, previous_le, previous_cum = 0.0, lower, 0.0
    for le, cumulative in buckets:
        n = cumulative - previous_cum
        top = min(le, upper)
        if n > 0 and top >= previous_le:
            width = top - previous_le
            midpoint = (previous_le + top) / 2
            total += n * ((midpoint - mean) ** 2 + width * width / 12)
        previous_le, previous_cum = max(previous_le, top), cumulative
    if previous_cum < count * 0.99:
        return bound
    return min(total / (count - 1), bound) if total > 0 else bound


def mean_difference(m1: float, v1: float, n1: float, m2: float, v2: float, n2: float,
                    alpha: float) -> Difference:
    """m1 - m2 with Welch's t bounds (unequal variances, Welch-Satterthwaite df).

    p_value: Welch's two-sided test of equal means.
    """
    e1, e2 = v1 / n1, v2 / n2
    se = math.sqrt(e1 + e2)
    d = m1 - m2
    if se == 0:
        return Difference(d, d, d, 0.0 if d else 1.0)
    df = (e1 + e2) ** 2 / (e1 * e1 / (n1 - 1) + e2 * e2 / (n2 - 1))
    t = float(stats.t.ppf(1.0 - alpha, df))
    p_value = float(stats.ttest_ind_from_stats(m1, math.sqrt(v1), n1, m2, math.sqrt(v2), n2,
                                               equal_var=False).pvalue)
    return Difference(d, d - t * se, d + t * se, p_value)
