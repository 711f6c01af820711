"""The HTTP service on a real loopback socket (uvicorn in a background thread, with its
lifespan), and tenants with one API key per role, made through the library's own use cases."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from imagegen.bootstrap.access import build_access
from imagegen.bootstrap.container import build_container
from imagegen.bootstrap.settings import Settings
from imagegen.client import AsyncImageGen
from imagegen.domain.access import Role
from imagegen.testing.emulators import serve

ROLES = tuple(role.value for role in Role)


@dataclass(frozen=True)
class TenantKeys:
    id: str
    name: str
    keys: dict[str, str]  # role -> the whole API key
    key_ids: dict[str, str]

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


def provision(settings: Settings, name: str) -> TenantKeys:
    """A new tenant with one key per role."""

    async def main() -> TenantKeys:
        container = build_container(settings)
        async with AsyncImageGen(container=container):
            access = build_access(container)
            tenant = await access.create_tenant.execute(name)
            issued = [await access.create_key.execute(tenant.id, role, role) for role in ROLES]
        return TenantKeys(
            tenant.id,
            tenant.name,
            {i.key.role.value: i.secret for i in issued},
            {i.key.role.value: i.key.id for i in issued},
        )

    return asyncio.run(main())


def call_access(settings: Settings, method: str, *args: Any) -> Any:
    """Run one access use case (``revoke_key``, ``rotate_key``, …) against the database."""

    async def main() -> Any:
        container = build_container(settings)
        async with AsyncImageGen(container=container):
            return await getattr(build_access(container), method).execute(*args)

    return asyncio.run(main())


def running(app: Any) -> contextlib.AbstractContextManager[str]:
    """Serve ``app`` (its lifespan on) on a free loopback port until the block ends."""
    return serve(app, lifespan="on")
