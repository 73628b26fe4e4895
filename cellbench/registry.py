"""A small generic registry with "did you mean" errors (cf. timm's model registry)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short keys (``"hm"``, ``"ccgan"``) to objects, with one-line descriptions.

    Parameters
    ----------
    kind:
        What the registry holds, used in error messages ("normalizer", "metric").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``. Re-registering a name is an error."""

        def deco(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str = "") -> None:
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        if not description:
            doc = getattr(obj, "__doc__", None) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self._descriptions[name] = description

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items)) or 'none'}."
            ) from None

    def describe(self, name: str) -> str:
        self.get(name)
        return self._descriptions[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
