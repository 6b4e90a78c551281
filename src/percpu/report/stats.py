"""Summary statistics and the significance test used by the report.

pyperf keeps every value of a benchmark; the report summarises them as
mean +- sample standard deviation and decides whether two points differ with
Welch's two-sample t-test (unequal variances: a contended point is far noisier
than an uncontended one, so pooling the variances as Student's test does would
understate the noise of the noisy side).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

#: Two points differ significantly when the two-sided p-value is below this.
ALPHA = 0.05


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation; 0.0 for a single value (nothing to spread)."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function, evaluated with the
    # modified Lentz method; converges quickly for x < (a + 1) / (a + b + 2).
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if not 0.0 <= x <= 1.0:
        raise ValueError("x must be in [0, 1]")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t distribution with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def welch_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """(t, p) of Welch's t-test, or None when either side has fewer than 2 values."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    ma, mb = mean(a), mean(b)
    va, vb = stdev(a) ** 2 / na, stdev(b) ** 2 / nb
    se2 = va + vb
    if se2 == 0.0:
        # Both samples are constant: they differ exactly when their means do.
        return (0.0, 1.0) if ma == mb else (math.copysign(math.inf, ma - mb), 0.0)
    t = (ma - mb) / math.sqrt(se2)
    # Welch-Satterthwaite degrees of freedom.
    df = se2 * se2 / (
        (va * va / (na - 1) if va else 0.0) + (vb * vb / (nb - 1) if vb else 0.0)
    )
    return t, t_two_sided_p(t, df)


def is_significant(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> bool | None:
    """True/False at level alpha; None when the samples are too small to tell."""
    result = welch_test(a, b)
    if result is None:
        return None
    return result[1] < alpha
