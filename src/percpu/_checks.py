"""Argument checks for the pure-Python entry points (workloads, bench, report).

Each raises ``TypeError`` or ``ValueError`` with a message that names the
argument, the way the extension modules do (``percpu/_args.pxd``), so that a
wrong argument never surfaces as an ``AttributeError`` or a ``TypeError``
from deep inside.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any



def _kind(value: object) -> str:
    return type(value).__name__


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {_kind(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise ValueError(f"{name} must be >= {low}, not {value}")
        raise ValueError(f"{name} must be in {low}..{high}, not {value}")
    return value


def check_str(value: object, name: str, *, optional: bool = False) -> Any:
    """A str (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str{' or None' if optional else ''}, not {_kind(value)}")
    return value


def check_strs(value: object, name: str, *, optional: bool = False) -> Any:
    """A list or tuple of str (or None when ``optional``), as a list."""
    if value is None and optional:
        return None
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of str{' or None' if optional else ''}, "
                        f"not {_kind(value)}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold str only, not {_kind(item)}")
    return list(value)


def check_argv(argv: object) -> list[str] | None:
    """A command line: None (``sys.argv``) or a list or tuple of str."""
    result: list[str] | None = check_strs(argv, "argv", optional=True)
    return result


def check_mapping(value: object, name: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping{' or None' if optional else ''}, not {_kind(value)}")
    return value


def check_path(value: object, name: str) -> Any:
    """A file name: str or os.PathLike of str, without NUL bytes."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), not {_kind(value)}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str path, not {_kind(text)}")
    if not text or "\0" in text:
        raise ValueError(f"{name} must be a non-empty file name without NUL bytes, not {text!r}")
    return value


def check_paths(value: object, name: str) -> list[Any]:
    """A list or tuple of paths."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of paths, not {_kind(value)}")
    return [check_path(v, f"{name}[{i}]") for i, v in enumerate(value)]


def check_instance(value: object, cls: type, name: str) -> Any:
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, not {_kind(value)}")
    return value


def check_instances(value: object, cls: type, name: str) -> list[Any]:
    """A list or tuple of ``cls`` instances, as a list."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of {cls.__name__}, not {_kind(value)}")
    for item in value:
        if not isinstance(item, cls):
            raise TypeError(f"{name} must hold {cls.__name__} only, not {_kind(item)}")
    return list(value)
