"""Tenants and API keys: creating, listing, revoking, rotating, and authenticating a key.

The ``tenants`` / ``keys`` commands run these for any tenant; ``ManageApiKeys`` is the same
for one tenant (its admin, over the API, through ``AccessGuard``): another tenant's key is
not found, and a creation can carry an idempotency key.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import attrs

from imagegen.application.access_ports import (
    AccessUnitOfWork,
    AccessUnitOfWorkFactory,
    ApiKeyCache,
    IdempotencyRecord,
    SecretSource,
)
from imagegen.application.pagination import decode_cursor, encode_cursor
from imagegen.application.ports import Clock, IdGenerator, Page
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
    IdempotencyConflict,
    ImageGenError,
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
        cache: ApiKeyCache | None = None,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids
        self._secrets = secrets
        self._cache = cache  # the process's cache of keys, told of what this changes

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

    async def _rotate(self, uow: AccessUnitOfWork, key_id: str, tenant_id: str | None) -> IssuedKey:
        """Issue the successor of an active key and revoke it (in ``uow``, not committed).
        With ``tenant_id``, another tenant's key is not found, exactly as a missing one."""
        old = await uow.api_keys.get(key_id)
        if old is None or not old.active or tenant_id not in (None, old.tenant_id):
            raise ApiKeyNotFound(f"No active API key {key_id}.", key_id=key_id)
        tenant = await _tenant(uow, old.tenant_id)
        issued = self._issue(tenant, old.role, old.name, old.id)
        old.revoke(self._clock.now())
        await uow.api_keys.save(old)
        await uow.api_keys.add(issued.key)
        return issued


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
            issued = await self._rotate(uow, key_id, None)
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


_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
MAX_KEYS_PAGE = 100


@attrs.frozen
class KeyOutcome:
    """A key ``ManageApiKeys`` made. ``secret`` is the whole key, shown once; a replayed
    idempotency key answers the key the first request made, without its secret (only its
    hash was ever stored): ``replayed`` is True and ``secret`` None."""

    key: ApiKey
    secret: str | None = attrs.field(default=None, repr=False)
    replayed: bool = False


class ManageApiKeys(_KeyIssuer):
    """One tenant's keys, as its admin manages them (``AccessGuard`` checks ``keys:manage``
    and passes the caller's tenant). Another tenant's key id is ``ApiKeyNotFound``, the same
    answer as an id that does not exist.

    Creating and rotating take an idempotency key (scopes ``keys.create`` and
    ``keys.rotate``): it is recorded with the new key in one transaction; replaying it
    answers that key (``replayed``, no secret) and makes nothing; the same idempotency key
    with another role or name (or another key to rotate) is an ``IdempotencyConflict``.

    Revoking the caller's own key is allowed: the request that revokes it succeeds, the
    next one with it is refused (``AuthenticationRequired``)."""

    async def create(
        self,
        tenant_id: str,
        role: str,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> KeyOutcome:
        parsed = parse_role(role)
        label = _check_key_name(name)

        async def issue(uow: AccessUnitOfWork) -> IssuedKey:
            tenant = await uow.tenants.get(tenant_id)
            if tenant is None:
                raise TenantNotFound(f"No tenant {tenant_id!r}.", tenant=tenant_id)
            issued = self._issue(tenant, parsed, label, None)
            await uow.api_keys.add(issued.key)
            return issued

        request = f"{parsed.value}|{label}"
        return await self._once(tenant_id, "keys.create", idempotency_key, request, issue)

    async def rotate(
        self, tenant_id: str, key_id: str, idempotency_key: str | None = None
    ) -> KeyOutcome:
        """As ``RotateApiKey``: a new key with the same role and name; the old one revoked
        in the same transaction. A revoked key is not rotated (``ApiKeyNotFound``)."""

        async def issue(uow: AccessUnitOfWork) -> IssuedKey:
            return await self._rotate(uow, key_id, tenant_id)

        outcome = await self._once(tenant_id, "keys.rotate", idempotency_key, key_id, issue)
        self._forget(key_id)
        return outcome

    async def get(self, tenant_id: str, key_id: str) -> ApiKey:
        async with self._uow(read_only=True) as uow:
            key = await uow.api_keys.get(key_id)
        if key is None or key.tenant_id != tenant_id:
            raise ApiKeyNotFound(f"No API key {key_id}.", key_id=key_id)
        return key

    async def list(
        self, tenant_id: str, limit: int = 20, cursor: str | None = None
    ) -> Page[ApiKey]:
        """The tenant's keys, revoked ones too, newest first. A tenant has a handful of keys:
        the page is cut here from the one indexed query of them all."""
        if not 1 <= limit <= MAX_KEYS_PAGE:
            raise InvalidParameter(f"A page holds 1 to {MAX_KEYS_PAGE} keys; got limit={limit}.")
        after = decode_cursor(cursor) if cursor is not None else None
        async with self._uow(read_only=True) as uow:
            keys = sorted(
                await uow.api_keys.list(tenant_id),
                key=lambda k: (k.created_at, k.id),
                reverse=True,
            )
        if after is not None:
            keys = [k for k in keys if (k.created_at, k.id) < after]
        page = tuple(keys[:limit])
        more = len(keys) > limit
        return Page(page, encode_cursor(page[-1].created_at, page[-1].id) if more else None)

    async def revoke(self, tenant_id: str, key_id: str) -> ApiKey:
        """As ``RevokeApiKey``: revoking a revoked key changes nothing."""
        async with self._uow() as uow:
            key = await uow.api_keys.get(key_id)
            if key is None or key.tenant_id != tenant_id:
                raise ApiKeyNotFound(f"No API key {key_id}.", key_id=key_id)
            if key.active:
                key.revoke(self._clock.now())
                await uow.api_keys.save(key)
                await uow.commit()
        self._forget(key_id)
        return key

    def _forget(self, key_id: str) -> None:
        """This process stops using a cached copy at once (others hear of it by the cache's
        own channel as the revocation commits)."""
        if self._cache is not None:
            self._cache.forget(key_id)

    async def _once(
        self,
        tenant_id: str,
        scope: str,
        idempotency_key: str | None,
        request: str,
        issue: Callable[[AccessUnitOfWork], Awaitable[IssuedKey]],
    ) -> KeyOutcome:
        """Run ``issue`` and commit; with an idempotency key, at most once per key."""
        if idempotency_key is None:
            async with self._uow() as uow:
                issued = await issue(uow)
                await uow.commit()
            return KeyOutcome(issued.key, issued.secret)
        if not _IDEMPOTENCY_KEY_RE.match(idempotency_key):
            raise InvalidParameter("An idempotency key is 1-255 printable ASCII characters.")
        fingerprint = hashlib.sha256(request.encode()).hexdigest()
        try:
            async with self._uow() as uow:
                done = await self._replay(uow, tenant_id, scope, idempotency_key, fingerprint)
                if done is not None:
                    return done
                issued = await issue(uow)
                await uow.idempotency.add(
                    IdempotencyRecord(
                        tenant_id=tenant_id,
                        scope=scope,
                        key=idempotency_key,
                        fingerprint=fingerprint,
                        response={"key_id": issued.key.id},
                        created_at=self._clock.now(),
                    )
                )
                await uow.commit()
        except ImageGenError:
            raise
        except Exception:
            # A concurrent request with the same idempotency key committed first (its record
            # took the primary key ours wanted, and ours rolled back): answer as its replay.
            async with self._uow(read_only=True) as uow:
                done = await self._replay(uow, tenant_id, scope, idempotency_key, fingerprint)
            if done is None:
                raise
            return done
        return KeyOutcome(issued.key, issued.secret)

    @staticmethod
    async def _replay(
        uow: AccessUnitOfWork, tenant_id: str, scope: str, idempotency_key: str, fingerprint: str
    ) -> KeyOutcome | None:
        record = await uow.idempotency.get(tenant_id, scope, idempotency_key)
        if record is None:
            return None
        if record.fingerprint != fingerprint:
            raise IdempotencyConflict(
                "This idempotency key was already used for a different request.",
                idempotency_key=idempotency_key,
            )
        key = await uow.api_keys.get(str(record.response["key_id"]))
        if key is None:  # keys are never deleted; a record without its key is a broken store
            raise ApiKeyNotFound("The key this idempotency key made is gone.")
        return KeyOutcome(key, None, replayed=True)


class AuthenticateApiKey:
    """The principal a presented key stands for: one primary-key read per request (none when
    a ``cache`` has the key), and a write of ``last_used_at`` at most once a minute per key.
    The secret is checked against the key's hash on every request."""

    def __init__(
        self, *, uow: AccessUnitOfWorkFactory, clock: Clock, cache: ApiKeyCache | None = None
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._cache = cache
        self._touched: dict[str, datetime] = {}  # this process's last write, per key

    async def _key(self, key_id: str) -> ApiKey | None:
        cache = self._cache
        if cache is not None and (cached := cache.get(key_id)) is not None:
            return cached
        mark = cache.mark() if cache is not None else None
        async with self._uow(read_only=True) as uow:
            key = await uow.api_keys.get(key_id)
        if cache is not None and key is not None:
            cache.put(key, mark)
        return key

    async def execute(self, presented: str | None) -> Principal:
        if not presented:
            raise AuthenticationRequired("An API key is required (Authorization: Bearer …).")
        if len(presented) > MAX_KEY_LENGTH:
            raise AuthenticationRequired("The API key is not valid.")
        key = await self._key(key_id_of(presented))
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
