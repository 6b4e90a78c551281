# Argument checks shared by the extension modules: every public entry point
# turns its Python arguments into C values here, so that a bad argument is a
# TypeError or ValueError naming it, never a C conversion error that does not
# say which argument was wrong (or, worse, a silently truncated float).
from cpython.number cimport PyNumber_Index


cdef inline object int_arg(object value, str name, object lo, object hi):
    """``value`` as a Python int in ``[lo, hi]`` (``hi`` None: no upper bound).

    Anything with ``__index__`` is an int (numpy integers included); bool is
    refused, as a count or a size of True is a bug, not a request.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        v = PyNumber_Index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if v < lo or (hi is not None and v > hi):
        if hi is None:
            raise ValueError(f"{name} must be >= {lo}, not {v}")
        raise ValueError(f"{name} must be in {lo}..{hi}, not {v}")
    return v
