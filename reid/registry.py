"""Name -> object registries for the framework's extension points."""

from collections.abc import Callable
from typing import Generic, TypeVar

from reid.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories, e.g. backbone names to model constructors.

    Example:
        >>> BACKBONES = Registry("backbone")
        >>> @BACKBONES.register("tiny")
        ... def tiny(**kwargs): ...
        >>> BACKBONES.get("tiny")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Returns the entry for ``name``; an unknown name lists the available ones."""
        if name not in self._entries:
            available = ", ".join(self.names())
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {available}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
