"""The one reader from plain mappings (a TOML recipe, the JSON form of a config) to the config dataclasses.

A table becomes a dataclass by its field types (``dataclasses.fields`` + ``typing.get_type_hints``): an Enum
from its value (case-insensitive), bool / int / float / str checked strictly (a bool is no number), a tuple
from an array, a nested dataclass from a table that updates the base's value, a tuple of dataclasses from an
array of tables, ``X | None`` from None or X. Unknown keys are errors that name the key and list the allowed
ones. The few fields whose recipe form differs from their type have a hook below (``_FIELD_HOOKS``).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, Callable, Mapping

from qcompile.config.calibration import CalibrationConfig, WorkersConfig
from qcompile.config.quant import NodeOverride, QuantSpec, default_activation_spec, default_weight_spec
from qcompile.config.transforms import SmoothQuantConfig
from qcompile.config.weight_only import WeightOnlyConfig
from qcompile.errors import ConfigError

#: Field metadata key: ``field(metadata={NOT_IN_RECIPES: True})`` keeps a field out of recipes and dicts (code
#: execution such as a custom-op library comes only from the CLI flag or the API argument).
NOT_IN_RECIPES = "not_in_recipes"

# TOML has no null: the word that spells None for fields whose default is not None.
_NONE_WORDS = {
    (QuantSpec, "dtype"): "auto",                       # the target profile chooses
    (WeightOnlyConfig, "accuracy_level"): "none",
    (WeightOnlyConfig, "embedding_bits"): "none",       # float
    (WeightOnlyConfig, "lm_head_bits"): "none",
}


def weight_only_from_mapping(data: Any, base: WeightOnlyConfig) -> WeightOnlyConfig:
    """The [weight_only] table over ``base`` (the CLI's weight-only flags go through it too)."""
    return dataclass_from_mapping(WeightOnlyConfig, data, "weight_only", base)


def dataclass_from_mapping(cls: type, data: Any, where: str, base: Any = None) -> Any:
    """``cls`` from the table ``data`` at key path ``where`` ("" for the root): ``base`` with the table's keys
    replaced, or ``cls(**table)`` without a base."""
    if not isinstance(data, Mapping):
        # "[a.b]" is the TOML header of a table; an array element ("overrides[0]") has none
        raise ConfigError(f"{where} must be a table" if "[" in where else f"[{where or 'config'}] must be a table")
    allowed = _recipe_fields(cls)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'config'}; allowed: {sorted(allowed)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        fresh = _FRESH_BASES.get((cls, name))
        inner = getattr(base, name) if base is not None else fresh() if fresh is not None else None
        hook, none_word = _FIELD_HOOKS.get((cls, name)), _NONE_WORDS.get((cls, name))
        if none_word is not None and value == none_word:
            kwargs[name] = None
        elif hook is not None:
            kwargs[name] = hook(value, key, inner)
        else:
            kwargs[name] = _read(allowed[name], value, key, inner)
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}.{missing[0]} is required" if where else f"{missing[0]} is required")
    return cls(**kwargs)


@functools.cache
def _recipe_fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type, for the fields a recipe may set."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and not f.metadata.get(NOT_IN_RECIPES)}


def _read(hint: Any, value: Any, key: str, base: Any) -> Any:
    """``value`` as type ``hint``; ``base`` is the current value a nested table updates."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _read(hint, value, key, base)
    if origin is tuple:
        return _read_tuple(args[0], value, key)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint, value, key)
    if dataclasses.is_dataclass(hint):
        return dataclass_from_mapping(hint, value, key, base)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"no recipe form for {key}: {hint!r}")   # a schema field this reader does not know


def _read_tuple(item: Any, value: Any, key: str) -> tuple:
    """tuple[X, ...] (or tuple[X, X], whose length __post_init__ checks) from an array; one string is an
    array of one (``exclude = "fc"``); an array of tables for a tuple of dataclasses (``[[overrides]]``)."""
    if dataclasses.is_dataclass(item):
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise ConfigError(f"{key} must be an array of tables ([[{key}]])")
        return tuple(dataclass_from_mapping(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if item is str and isinstance(value, str):
        value = [value]
    noun = {str: "strings", int: "integers", float: "numbers"}.get(item, "values")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be an array of {noun}, got {value!r}")
    try:
        return tuple(_read(item, v, key, None) for v in value)
    except ConfigError:
        raise ConfigError(f"{key} must be an array of {noun}, got {value!r}") from None


def _enum(cls: type[enum.Enum], value: Any, key: str) -> enum.Enum:
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise ConfigError(f"{key}: {value!r} is not one of {choices}") from None


# ---- fields whose recipe form is not their type ---------------------------------------------------------

def parse_alpha(value: Any, key: str) -> float | None:
    """An α value: a number in [0, 1] or "auto" (None: search per layer)."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number in [0, 1] or 'auto', got {value!r}") from None
    return _read(float, value, key, None)


def _op_alpha(value: Any, key: str, base: Any) -> tuple[tuple[str, float | None], ...]:
    """A table (TOML) or [op, alpha] pairs (the JSON form of the config in reports)."""
    pairs = value.items() if isinstance(value, Mapping) else value
    if not isinstance(pairs, (list, tuple, type({}.items()))) or \
            not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ConfigError(f"{key} must be a table, e.g. op_alpha = {{ Gemm = 0.7 }}")
    return tuple((str(op), parse_alpha(a, f"{key}.{op}")) for op, a in pairs)


def _workers(value: Any, key: str, base: WorkersConfig | None) -> WorkersConfig | None:
    """``workers = "ray://head:10001"`` or a ``[calibration.workers]`` table of WorkersConfig's fields."""
    if isinstance(value, str):
        return WorkersConfig(address=value)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be an address string or a table")
    return dataclass_from_mapping(WorkersConfig, value, key, base)


_FIELD_HOOKS: dict[tuple[type, str], Callable[[Any, str, Any], Any]] = {
    (SmoothQuantConfig, "alpha"): lambda value, key, base: parse_alpha(value, key),
    (SmoothQuantConfig, "op_alpha"): _op_alpha,
    (CalibrationConfig, "workers"): _workers,
}

# An override's specs start from CompileConfig's defaults, not from the recipe's [activation] / [weight].
_FRESH_BASES: dict[tuple[type, str], Callable[[], Any]] = {
    (NodeOverride, "activation"): default_activation_spec,
    (NodeOverride, "weight"): default_weight_spec,
}
