"""Name -> object registries for the framework's extension points."""

from collections.abc import Callable
from typing import Generic, TypeVar

from reid.errors import ReidError, UnknownNameError

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
        self._families: dict[str, Callable[[str], T]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ReidError(
                    f"{self.kind} {name!r} is already registered; register yours under another name"
                )
            self._entries[name] = obj
            return obj

        return decorator

    def register_family(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """Makes every name ``prefix + member`` resolve to ``resolve(member)``.

        For open-ended families such as ``torchvision/<any model>``, too many to
        register one by one; ``resolve`` raises UnknownNameError for a bad member.
        """
        self._families[prefix] = resolve

    def get(self, name: str) -> T:
        """Returns the entry for ``name``; an unknown name lists the available ones."""
        if name in self._entries:
            return self._entries[name]
        for prefix, resolve in self._families.items():
            if name.startswith(prefix):
                return resolve(name[len(prefix) :])
        available = ", ".join(self.names() + [f"{prefix}<name>" for prefix in self._families])
        raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {available}")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
