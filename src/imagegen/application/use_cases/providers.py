"""Provider health: is each configured provider answering and accepting our credentials?"""

from __future__ import annotations

import asyncio

from imagegen.application.ports import ProviderHealth, ProviderRegistry
from imagegen.domain.errors import ImageGenError


class CheckProviders:
    def __init__(self, *, providers: ProviderRegistry, timeout_s: float = 15.0) -> None:
        self._providers = providers
        self._timeout_s = timeout_s

    async def execute(self, names: list[str] | None = None) -> list[ProviderHealth]:
        wanted = names or list(self._providers.names())
        return list(await asyncio.gather(*(self._check(name) for name in wanted)))

    async def _check(self, name: str) -> ProviderHealth:
        try:
            provider = self._providers.get(name)
            async with asyncio.timeout(self._timeout_s):
                return await provider.health()
        except TimeoutError:
            return ProviderHealth(name, ok=False, detail=f"no answer within {self._timeout_s:g} s")
        except ImageGenError as error:  # e.g. a missing extra or credential
            return ProviderHealth(name, ok=False, detail=error.message)
