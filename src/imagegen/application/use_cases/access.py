"""Tenants and API keys: creating, listing, revoking, rotating, and authenticating a key."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import attrs

from imagegen.application.access_ports import (
    AccessUnitOfWork,
    AccessUnitOfWorkFactory,
    SecretSource,
)
from imagegen.application.ports import Clock, IdGenerator
from imagegen.domain.access import (
    KEY_ID_PREFIX,
    LAST_USED_RESOLUTION,
    SECRET_BYTES,
    ApiKey,
    Principal,
    Role,
    Tenant,
    check_tenant_name,
    format_key,
    hash_key,
    key_id_of,
    parse_role,
)
from imagegen.domain.errors import (
    ApiKeyNotFound,
    AuthenticationRequired,
    InvalidParameter,
    TenantNotFound,
)

log = logging.getLogger("imagegen.access")

MAX_KEY_LENGTH = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def _tenant(uow: AccessUnitOfWork, reference: str) -> Tenant:
    """A tenant by id or by name."""
    tenant = await uow.tenants.get(reference) or await uow.tenants.get_by_name(reference)
    if tenant is None:
        raise TenantNotFound(f"No tenant {reference!r}.", tenant=reference)
    return tenant


class CreateTenant:
    def __init__(self, *, uow: AccessUnitOfWorkFactory, clock: Clock, ids: IdGenerator) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids

    async def execute(self, name: str) -> Tenant:
        tenant = Tenant(
            id=self._ids.new("ten"), name=check_tenant_name(name), created_at=self._clock.now()
        )
        async with self._uow() as uow:
            if await uow.tenants.get_by_name(tenant.name) is not None:
                raise InvalidParameter(f"A tenant named {tenant.name!r} exists.", name=tenant.name)
            await uow.tenants.add(tenant)
            await uow.commit()
        return tenant


class ListTenants:
    def __init__(self, *, uow: AccessUnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self) -> tuple[Tenant, ...]:
        async with self._uow(read_only=True) as uow:
            return tuple(await uow.tenants.list())


@attrs.frozen
class IssuedKey:
    """A new key: ``secret`` is the whole key, shown once and never stored."""

    key: ApiKey
    tenant: Tenant
    secret: str = attrs.field(repr=False)


def _check_key_name(name: str | None) -> str:
    name = (name or "").strip()
    if len(name) > 100 or any(not c.isprintable() for c in name):
        raise InvalidParameter("A key name is at most 100 printable characters.")
    return name


class _KeyIssuer:
    def __init__(
        self,
        *,
        uow: AccessUnitOfWorkFactory,
        clock: Clock,
        ids: IdGenerator,
        secrets: SecretSource,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids
        self._secrets = secrets

    def _issue(self, tenant: Tenant, role: Role, name: str, replaces: str | None) -> IssuedKey:
        key_id = self._ids.new(KEY_ID_PREFIX.rstrip("_"))
        secret = format_key(key_id, self._secrets.token(SECRET_BYTES))
        key = ApiKey(
            id=key_id,
            tenant_id=tenant.id,
            role=role,
            name=name,
            key_hash=hash_key(secret),
            created_at=self._clock.now(),
            replaces=replaces,
        )
        return IssuedKey(key, tenant, secret)


class CreateApiKey(_KeyIssuer):
    async def execute(self, tenant: str, role: str, name: str | None = None) -> IssuedKey:
        parsed = parse_role(role)
        label = _check_key_name(name)
        async with self._uow() as uow:
            issued = self._issue(await _tenant(uow, tenant), parsed, label, None)
            await uow.api_keys.add(issued.key)
            await uow.commit()
        return issued


class RotateApiKey(_KeyIssuer):
    """A new key with the same tenant, role and name; the old one is revoked in the same
    transaction (so there is never a moment with neither, nor one with both for long)."""

    async def execute(self, key_id: str) -> IssuedKey:
        async with self._uow() as uow:
            old = await uow.api_keys.get(key_id)
            if old is None or not old.active:
                raise ApiKeyNotFound(f"No active API key {key_id}.", key_id=key_id)
            tenant = await _tenant(uow, old.tenant_id)
            issued = self._issue(tenant, old.role, old.name, old.id)
            old.revoke(self._clock.now())
            await uow.api_keys.save(old)
            await uow.api_keys.add(issued.key)
            await uow.commit()
        return issued


class ListApiKeys:
    def __init__(self, *, uow: AccessUnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self, tenant: str | None = None) -> tuple[ApiKey, ...]:
        async with self._uow(read_only=True) as uow:
            if tenant is not None:
                return tuple(await uow.api_keys.list((await _tenant(uow, tenant)).id))
            keys: list[ApiKey] = []
            for each in await uow.tenants.list():
                keys.extend(await uow.api_keys.list(each.id))
            return tuple(keys)


class RevokeApiKey:
    def __init__(self, *, uow: AccessUnitOfWorkFactory, clock: Clock) -> None:
        self._uow = uow
        self._clock = clock

    async def execute(self, key_id: str) -> ApiKey:
        """Revoke (revoking a revoked key changes nothing)."""
        async with self._uow() as uow:
            key = await uow.api_keys.get(key_id)
            if key is None:
                raise ApiKeyNotFound(f"No API key {key_id}.", key_id=key_id)
            if key.active:
                key.revoke(self._clock.now())
                await uow.api_keys.save(key)
                await uow.commit()
        return key


class AuthenticateApiKey:
    """The principal a presented key stands for: one primary-key read per request, and a
    write of ``last_used_at`` at most once a minute per key."""

    def __init__(self, *, uow: AccessUnitOfWorkFactory, clock: Clock) -> None:
        self._uow = uow
        self._clock = clock
        self._touched: dict[str, datetime] = {}  # this process's last write, per key

    async def execute(self, presented: str | None) -> Principal:
        if not presented:
            raise AuthenticationRequired("An API key is required (Authorization: Bearer …).")
        if len(presented) > MAX_KEY_LENGTH:
            raise AuthenticationRequired("The API key is not valid.")
        key_id = key_id_of(presented)
        async with self._uow(read_only=True) as uow:
            key = await uow.api_keys.get(key_id)
        if key is None or not key.matches(presented):
            raise AuthenticationRequired("The API key is not valid.")
        if not key.active:
            raise AuthenticationRequired("The API key was revoked.")
        now = self._clock.now()
        if key.needs_touch(now) and now - self._touched.get(key.id, _EPOCH) >= LAST_USED_RESOLUTION:
            self._touched[key.id] = now
            try:
                async with self._uow() as uow:
                    await uow.api_keys.touch(key.id, now)
                    await uow.commit()
            except Exception:
                # A busy database must not turn a valid request away for a statistic.
                log.warning("could not record the use of key %s", key.id, exc_info=True)
        return Principal(tenant_id=key.tenant_id, key_id=key.id, role=key.role)
