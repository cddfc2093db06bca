"""The type check every config dataclass runs first in ``__post_init__``, driven by its field annotations (as
mapping.py reads recipes by them), so that a wrong Python value is a one-line ConfigError at construction:

    Enum E         an E member              bool       a bool
    int            an integer, not a bool   float      a real number, not a bool
    str            a str                    tuple[X, ...]  a tuple of X (a list becomes one) — never a str
    X | None       None or X                a dataclass   an instance of it
    Mapping[K, V]  a mapping                anything else (Any, callables)   not checked

``CompileConfig(op_types="MatMul")`` would otherwise iterate the letters; ``CalibrationConfig(num_samples="5")``
would fail with a TypeError deep in a comparison.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import numbers
import types
import typing
from typing import Any

from qcompile.errors import ConfigError

__all__ = ["check_field_types"]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a bool", type(None): "None"}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        inner = args[0] if args else Any
        return f"a tuple of {getattr(inner, '__name__', str(inner))} values"
    if tp in _NAMES:
        return _NAMES[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"a {tp.__name__} ({', '.join(repr(m.value) for m in tp)})"
    return f"a {getattr(tp, '__name__', str(tp))}"


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in (collections.abc.Mapping, dict) or tp in (collections.abc.Mapping, dict):
        return isinstance(value, collections.abc.Mapping)
    if isinstance(tp, type) and (issubclass(tp, enum.Enum) or dataclasses.is_dataclass(tp)):
        return isinstance(value, tp)
    return True   # Any, callables, forms this checker does not know: the dataclass's own checks apply


def check_field_types(instance: Any) -> None:
    """Raise ConfigError naming the first field of ``instance`` whose value does not match its annotation."""
    cls = type(instance)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        expected = hints.get(f.name, Any)
        if isinstance(value, list) and _matches(value, expected):   # a list where a tuple is declared
            object.__setattr__(instance, f.name, tuple(value))
        elif not _matches(value, expected):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            hint = " (a str is not a tuple: wrap it, e.g. ('MatMul',))" \
                if isinstance(value, str) and typing.get_origin(expected) is tuple else ""
            raise ConfigError(f"{cls.__name__}.{f.name} must be {_describe(expected)}, got "
                              f"{type(value).__name__} {shown}{hint}")
