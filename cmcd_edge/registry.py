"""A small typed registry (timm style): factories registered by a decorator, unknown keys answered with the
valid ones and a close-match suggestion."""

from __future__ import annotations

import difflib
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


def check_choice(what: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a UserError listing them with a close-match suggestion."""
    choices = list(choices)
    if value not in choices:
        hint = difflib.get_close_matches(value, choices, n=1)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserError(f"unknown {what} {value!r}{did}; valid: {', '.join(choices)}")
    return value
