"""A tiny name -> object registry, as timm and peft use for models and methods."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ForgetkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; ``register`` is a decorator, ``get`` fails with the list of known names."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        """``loader`` imports the modules whose decorators fill the registry; it runs on the first look-up, so that
        importing the registry costs nothing (``forgetkit --help`` and config checks need no method code)."""
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ForgetkitError(f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._items))}.")
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
