"""Typed config schemas as dataclasses: each key's type (the annotation), range (``spec(ok=...)``), choices
(``Literal``) and default in one place, checked against a config node before anything is written.

Why not Hydra's structured configs at compose time: their errors are multi-line, exit 1 and come before our
entry point; here the first violation becomes one line that names the fix (``sora.cli``: exit 2). Unknown keys
are refused too (``+train.lrr=1`` is a typo, not a setting). The yaml files keep their comments for readers and
are held to these defaults by ``tests/test_schema.py``, so the dataclasses are the one source.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, field, fields, is_dataclass

from sora.errors import UserError

__all__ = ["spec", "check_node", "schema_defaults", "positive", "nonneg", "unit_interval"]


def spec(default=MISSING, *, what: str | None = None, ok=None, example=None, default_factory=MISSING):
    """A schema field: ``ok(value)`` is its range rule (the type is the annotation's), ``what`` says the rule in
    words for the error line, ``example`` is a valid value to suggest."""
    meta = {"what": what, "ok": ok, "example": example}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def positive(v) -> bool:
    return v > 0


def nonneg(v) -> bool:
    return v >= 0


def unit_interval(v) -> bool:
    """[0, 1): dropouts, Adam betas."""
    return 0 <= v < 1


def check_node(node, schema, prefix: str = "", foreign: frozenset = frozenset()) -> None:
    """Raise ``UserError`` at the first key of ``node`` (a DictConfig, a mapping or a dataclass instance) that is
    unknown to ``schema`` or violates its type or range. Keys the node lacks take the schema's default; keys in
    ``foreign`` (another choice's, e.g. an experiment's ``method.xi`` on its LoRA runs) are left to their owner."""
    values = _items(node)
    hints = typing.get_type_hints(schema)
    known = {f.name: f for f in fields(schema)}
    for key in values:
        if key not in known and key not in foreign:
            where = prefix.rstrip(".") or "the config"
            raise UserError(f"unknown key {prefix}{key}; {where} has {', '.join(known)}")
    for name, f in known.items():
        if name not in values:
            continue
        tp, value = hints[name], values[name]
        if is_dataclass(tp):
            check_node(value, tp, f"{prefix}{name}.")
        else:
            _check_value(f"{prefix}{name}", value, tp, f.metadata)


def schema_defaults(schema) -> dict:
    """Every key's default (nested schemas as dicts): what the yaml files must say."""
    out = {}
    for f in fields(schema):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
            out[f.name] = schema_defaults(type(value)) if is_dataclass(value) else value
    return out


def _items(node) -> dict:
    if is_dataclass(node) and not isinstance(node, type):
        return {f.name: getattr(node, f.name) for f in fields(node)}
    if isinstance(node, Mapping):
        return dict(node.items())  # a DictConfig resolves its interpolations here
    raise UserError(f"expected a group of keys, got {node!r}")


def _check_value(key: str, value, tp, meta) -> None:
    conforms, described = _conforms(value, tp)
    in_range = conforms and (value is None or meta.get("ok") is None or meta["ok"](value))
    if in_range:
        return
    choices = _choices(tp)
    if choices:
        raise UserError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    example = meta.get("example")
    hint = f"; e.g. {key}={example}" if example is not None else ""
    raise UserError(f"{key} must be {meta.get('what') or described}, got {value!r}{hint}")


def _conforms(value, tp) -> tuple[bool, str]:
    """(does ``value`` have type ``tp``, the type in words). Floats must be finite; bools are not numbers."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return type(None) in args, "null"
        results = [_conforms(value, a) for a in inner]
        return any(ok for ok, _ in results), " or ".join(d for _, d in results) + " or null"
    if origin is typing.Literal:
        return value in args, "one of " + ", ".join(map(str, args))
    if origin in (list, tuple):
        is_seq = isinstance(value, Sequence) and not isinstance(value, str)
        elem = args[0] if args else typing.Any
        return is_seq and all(_conforms(v, elem)[0] for v in value), f"a list of {_conforms(None, elem)[1]}"
    if tp is bool:
        return isinstance(value, bool), "true or false"
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, "a finite number"
    if tp is str:
        return isinstance(value, str), "a string"
    if tp is dict or origin is dict:
        return value is None or isinstance(value, Mapping), "a group of keys"
    return True, "anything"


def _choices(tp) -> tuple:
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) is typing.Literal:
            return typing.get_args(t)
    return ()


def choice_keys(schemas) -> frozenset:
    """Every key any choice of a config group has: a key of another choice is left to its owner (``check_node``'s
    ``foreign``), e.g. an experiment's ``method.xi`` on its LoRA runs."""
    return frozenset(f.name for schema in schemas if schema for f in fields(schema))


def literal_choices(schema, key: str) -> tuple:
    """The values a ``Literal`` field allows (the one list code that dispatches on the key reads)."""
    return tuple(c for c in _choices(typing.get_type_hints(schema)[key]) if c is not None)
