"""The provider registry: providers by name, built on first use and wrapped in the resilience
layer (retries, rate limit, concurrency cap, circuit breaker) when they call a network."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from imagegen.application.ports import ImageProvider
from imagegen.domain.errors import UnknownProvider
from imagegen.infrastructure.providers.resilience import ResiliencePolicy, ResilientProvider


class ProviderRegistry:
    """``factories`` build each provider when it is first asked for (so an SDK is imported
    only by the apps that use its provider). Providers named in ``local`` run in-process
    and are not wrapped: retrying a deterministic offline renderer cannot help."""

    def __init__(
        self,
        factories: Mapping[str, Callable[[], ImageProvider]],
        policy: ResiliencePolicy | None = None,
        *,
        local: Collection[str] = ("local",),
    ) -> None:
        self._factories = dict(factories)
        self._policy = policy
        self._local = frozenset(local)
        self._built: dict[str, ImageProvider] = {}

    def get(self, name: str) -> ImageProvider:
        provider = self._built.get(name)
        if provider is not None:
            return provider
        factory = self._factories.get(name)
        if factory is None:
            known = ", ".join(self._factories)
            raise UnknownProvider(f"Unknown provider {name!r}; available: {known}.", provider=name)
        provider = factory()
        if self._policy is not None and name not in self._local:
            provider = ResilientProvider(provider, self._policy)
        self._built[name] = provider
        return provider

    def names(self) -> Sequence[str]:
        return tuple(self._factories)

    def built(self) -> Sequence[ImageProvider]:
        """The providers created so far."""
        return tuple(self._built.values())

    async def aclose(self) -> None:
        """Close the connection pools of the providers that keep one."""
        for provider in self._built.values():
            inner = provider.inner if isinstance(provider, ResilientProvider) else provider
            close = getattr(inner, "aclose", None)
            if close is not None:
                await close()
