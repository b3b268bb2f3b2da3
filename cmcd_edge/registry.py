"""A small typed registry (timm style): factories registered by a decorator, unknown keys answered with the
valid ones and a close-match suggestion."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cmcd_edge.errors import UserError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        return self._items[check_choice(self.what, name, self._items)]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def did_you_mean(value: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing when none is close."""
    hint = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def check_choice(what: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a UserError listing them with a close-match suggestion."""
    choices = list(choices)
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}{did_you_mean(value, choices)}; valid: {', '.join(choices)}")
    return value


def check_unique(what: str, items: list) -> None:
    """A UserError naming the first item of ``items`` given twice (a repeat is more likely a typo for another item
    than a wish to do the same work twice)."""
    for i, v in enumerate(items):
        if v in items[:i]:
            raise UserError(f"{what}: {v!r} appears twice")


def check_keys(d: dict, known, where: str) -> None:
    """Unknown keys of a config or spec dict: one UserError naming them, a close match, and the valid keys."""
    known = list(known)
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                        f"{did_you_mean(unknown[0], known)}; valid: {', '.join(sorted(known))}")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _is(value, t: type) -> bool:
    if t is bool or isinstance(value, bool):  # JSON's true is no integer, and 1 is no boolean
        return t is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if t is float else t)


def check_types(d: dict, cls: type, where: str) -> None:
    """Values of a config dict against the scalar fields of the dataclass ``cls`` (bool, int, float, str, each
    optionally ``| None``): one UserError naming the key, the type asked and the value given. Other fields (nested
    configs) are left to their own check."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        hint, value = hints[f.name], d[f.name]
        args = typing.get_args(hint) if isinstance(hint, type(int | None)) else (hint,)
        types = [a for a in args if a is not type(None)]
        if len(types) != 1 or types[0] not in _KINDS:
            continue
        if value is None and len(args) > 1 or _is(value, types[0]):
            continue
        null = " or null" if len(args) > 1 else ""
        raise UserError(f"{where}: {f.name} must be {_KINDS[types[0]]}{null}, got {value!r}")
