"""The provider registry: providers by name, built on first use."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from imagegen.application.ports import ImageProvider
from imagegen.domain.errors import UnknownProvider


class ProviderRegistry:
    def __init__(self, factories: Mapping[str, Callable[[], ImageProvider]]) -> None:
        self._factories = dict(factories)
        self._built: dict[str, ImageProvider] = {}

    def get(self, name: str) -> ImageProvider:
        provider = self._built.get(name)
        if provider is not None:
            return provider
        factory = self._factories.get(name)
        if factory is None:
            known = ", ".join(self._factories)
            raise UnknownProvider(f"Unknown provider {name!r}; available: {known}.", provider=name)
        provider = self._built[name] = factory()
        return provider

    def names(self) -> Sequence[str]:
        return tuple(self._factories)
