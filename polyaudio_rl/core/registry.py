"""The one registry type: named choices (advantage estimators, losses, reward components, tasks, engines, ...).

    ADV = Registry("advantage estimator")

    @ADV.register("grpo")
    def grpo_advantages(...): ...

    ADV["grpo"]            # the function; an unknown name raises RegistryError listing the registered ones
    "grpo" in ADV, sorted(ADV), ADV.get("x")   # a read-only Mapping otherwise

Registering a second, different object under a taken name is an error naming both; registering the same object
again is a no-op (a module imported twice).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(KeyError, ValueError):
    """An unknown name (the message lists the registered ones) or a name registered twice."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """A name → object table with a decorator to fill it and errors that say what exists."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; returns it."""
        old = self._items.get(name)
        if old is not None and old is not obj:
            where = getattr(old, "__module__", type(old).__name__)
            raise RegistryError(f"{self.kind} {name!r} is already registered (by {where})")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda obj: self.add(name, obj)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._items))}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(sorted(self._items))})"


__all__ = ["Registry", "RegistryError"]
