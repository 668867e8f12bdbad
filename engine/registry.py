"""Named registries: one list of choices that feeds the spec, the API and the UI.

An entry is behaviour: a class or a function. Where it needs torch, vLLM or DeepSpeed the
entry is registered as a dotted path ("engine.training.torch_backend:TorchTrainingBackend")
so that listing and validating names (the spec, the platform) never imports those;
`load(name)` imports it when a run builds the part.
"""

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → entry map that refuses duplicates, so two modules can't silently fight."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, entry: T | str) -> T | str:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T | str:
        """The entry as registered (a dotted path stays a string: see `load`)."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def load(self, name: str) -> T:
        """The entry, imported first when it was registered as "module:attribute"."""
        entry = self.get(name)
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
        return entry

    def unknown_message(self, name: Any) -> str:
        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
