"""Number formatting shared by the tables and the findings."""
from __future__ import annotations

import math


def si(value: float, unit: str = "") -> str:
    """3 significant figures with an SI prefix: 12.3 M, 456 k."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}".strip()
    prefixes = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))
    for scale, prefix in prefixes:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}".strip()
    return f"{value:.3g} {unit}".strip()


def ops(value: float) -> str:
    return si(value, "ops/s")


def ns(seconds: float, digits: int = 3) -> str:
    return f"{seconds * 1e9:.{digits}g} ns"


def ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def percent_change(r: float) -> str:
    return f"{(r - 1) * 100:+.1f}%"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def significance(sig: bool | None) -> str:
    if sig is None:
        return "too few values to test"
    return "significant" if sig else "not significant"
