"""Wiring of tenancy and access (the HTTP service's and the ``tenants`` / ``keys`` commands'),
from the same container as the rest of the library: an override of ``gateways.uow``,
``clock`` or ``ids`` applies here too."""

from __future__ import annotations

from typing import Any

import attrs

from imagegen.application.access_ports import AccessUnitOfWorkFactory
from imagegen.application.guard import AccessGuard
from imagegen.application.use_cases.access import (
    AuthenticateApiKey,
    CreateApiKey,
    CreateTenant,
    ListApiKeys,
    ListTenants,
    ManageApiKeys,
    RevokeApiKey,
    RotateApiKey,
)
from imagegen.application.use_cases.grants import GrantCreditsOnce
from imagegen.bootstrap.container import Container
from imagegen.domain.errors import ConfigurationError
from imagegen.infrastructure.persistence.key_cache import NotifiedKeyCache
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.infrastructure.secrets import TokenSecrets


@attrs.frozen
class Access:
    guard: AccessGuard
    authenticate: AuthenticateApiKey
    create_tenant: CreateTenant
    list_tenants: ListTenants
    create_key: CreateApiKey
    list_keys: ListApiKeys
    revoke_key: RevokeApiKey
    rotate_key: RotateApiKey
    key_cache: NotifiedKeyCache | None = None

    async def aclose(self) -> None:
        if self.key_cache is not None:
            await self.key_cache.aclose()


def declares(container: Container, *repositories: str) -> bool:
    """Whether the container's unit of work declares these repositories (the SQL one has
    them all; the in-memory fakes have the core's only)."""
    uow: Any = container.gateways.uow()
    declared = {
        name
        for kind in type(uow(read_only=True)).__mro__
        for name in vars(kind).get("__annotations__", {})
    }
    return set(repositories) <= declared


def _access_uow(container: Container) -> AccessUnitOfWorkFactory:
    uow: Any = container.gateways.uow()
    if not declares(container, "tenants", "api_keys", "idempotency"):
        raise ConfigurationError(
            f"The unit of work {type(uow).__name__} has no tenants, API keys or idempotency "
            "repositories; the HTTP service needs them (the SQL unit of work has them)."
        )
    factory: AccessUnitOfWorkFactory = uow
    return factory


def build_access(container: Container) -> Access:
    gateways = container.gateways
    uow = _access_uow(container)
    clock, ids = gateways.clock(), gateways.ids()
    secrets = TokenSecrets()
    key_cache = _key_cache(container)
    manage_keys = ManageApiKeys(uow=uow, clock=clock, ids=ids, secrets=secrets, cache=key_cache)
    guard = AccessGuard(
        generate_images=container.generate_images(),
        get_generation=container.get_generation(),
        list_history=container.list_history(),
        save_to_dam=container.save_to_dam(),
        get_asset=container.get_asset(),
        list_assets=container.list_assets(),
        export_asset=container.export_asset(),
        get_balance=container.get_balance(),
        grant_credits_once=GrantCreditsOnce(
            uow=uow, clock=clock, ids=ids, policy=container.policy()
        ),
        list_models=container.list_models(),
        estimate_cost=container.estimate_cost(),
        uow=uow,
        storage=gateways.storage(),
        submit_generation=container.submit_generation(),
        cancel_generation=container.cancel_generation(),
        usage_reports=container.usage_report(),
        manage_keys=manage_keys,
    )
    return Access(
        guard=guard,
        authenticate=AuthenticateApiKey(uow=uow, clock=clock, cache=key_cache),
        create_tenant=CreateTenant(uow=uow, clock=clock, ids=ids),
        list_tenants=ListTenants(uow=uow),
        create_key=CreateApiKey(uow=uow, clock=clock, ids=ids, secrets=secrets),
        list_keys=ListApiKeys(uow=uow),
        revoke_key=RevokeApiKey(uow=uow, clock=clock),
        rotate_key=RotateApiKey(uow=uow, clock=clock, ids=ids, secrets=secrets),
        key_cache=key_cache,
    )


def _key_cache(container: Container) -> NotifiedKeyCache | None:
    """Only over the SQL unit of work on PostgreSQL (the only place revocations are heard)."""
    if not container.settings().api_key_cache:
        return None
    if not isinstance(container.gateways.uow(), SqlUnitOfWorkFactory):
        return None
    url = container.gateways.engine().url
    if url.get_backend_name() != "postgresql":
        return None
    return NotifiedKeyCache(url.set(drivername="postgresql").render_as_string(hide_password=False))
