"""What the fuzz tests share: the argument strategies, the settings, and
expect(). A plain module (not a test file), imported by the test files."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

SETTINGS = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def wrap64(v: int) -> int:
    return (v + 2**63) % 2**64 - 2**63


#: Every kind of argument a caller could pass by mistake or on purpose.
EDGE_INTS = [0, 1, -1, 2, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1, 2**63, -(2**63) - 1,
             2**64, -(2**64), 10**30, -(10**30), 2**31, -(2**31)]
ANYTHING = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.integers(),
    st.sampled_from(EDGE_INTS),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.sampled_from([np.int64(7), np.int32(-3), np.uint64(2**64 - 1), np.float64(1.0)]),
    st.lists(st.integers(), max_size=2),
    st.sampled_from([1 + 0j, object()]),
)


def expect(call: Callable[[], Any], allowed: tuple[type[BaseException], ...] | None) -> Any:
    """Run ``call``: with ``allowed`` None it must succeed, otherwise it must
    raise exactly one of ``allowed`` (never anything else, never succeed)."""
    if allowed is None:
        return call()
    with pytest.raises(allowed):
        call()
    return None
