"""The ports of tenancy and access: tenants, API keys, and idempotency records for the
requests that have no idempotency of their own (credit grants).

They extend the unit of work: ``AccessUnitOfWork`` is a ``UnitOfWork`` with three more
repositories (the SQL unit of work has them), so a grant and its idempotency record commit
in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import attrs

from imagegen.application.ports import UnitOfWork
from imagegen.domain.access import ApiKey, Tenant


class SecretSource(Protocol):
    def token(self, nbytes: int) -> str:
        """``nbytes`` of cryptographic randomness, URL-safe text without padding."""
        ...


class TenantRepository(Protocol):
    async def add(self, tenant: Tenant) -> None:
        """Insert; raises ``InvalidParameter`` if the name is taken."""
        ...

    async def get(self, tenant_id: str) -> Tenant | None: ...

    async def get_by_name(self, name: str) -> Tenant | None: ...

    async def list(self) -> Sequence[Tenant]: ...


class ApiKeyRepository(Protocol):
    async def add(self, key: ApiKey) -> None: ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def list(self, tenant_id: str) -> Sequence[ApiKey]: ...

    async def save(self, key: ApiKey) -> None:
        """Persist ``revoked_at``."""
        ...

    async def touch(self, key_id: str, at: datetime) -> None:
        """Set ``last_used_at`` (one cheap UPDATE, nothing read)."""
        ...


class ApiKeyCache(Protocol):
    """Keys already read, kept by a process so that authenticating costs no database read.

    Only an adapter that learns of every change to a key (a revocation) as it commits may
    implement this: a cached key must never outlive its revocation by more than the time the
    news takes to arrive. ``mark()`` is taken *before* reading the database; ``put`` keeps the
    key only if nothing was invalidated since (so a read that raced a revocation is not
    cached)."""

    def get(self, key_id: str) -> ApiKey | None: ...

    def mark(self) -> object: ...

    def put(self, key: ApiKey, mark: object) -> None: ...

    def forget(self, key_id: str) -> None:
        """Drop a key this process changed (others hear of it as it commits)."""
        ...


@attrs.frozen
class IdempotencyRecord:
    """A request that was done once under a key, and what it answered."""

    tenant_id: str
    scope: str  # what kind of request, e.g. "credits.grant"
    key: str
    fingerprint: str  # the request's parameters: the same key with others is a conflict
    response: dict[str, Any]
    created_at: datetime


class IdempotencyRepository(Protocol):
    async def get(self, tenant_id: str, scope: str, key: str) -> IdempotencyRecord | None: ...

    async def add(self, record: IdempotencyRecord) -> None: ...


class AccessUnitOfWork(UnitOfWork, Protocol):
    tenants: TenantRepository
    api_keys: ApiKeyRepository
    idempotency: IdempotencyRepository


class AccessUnitOfWorkFactory(Protocol):
    def __call__(self, *, read_only: bool = False) -> AccessUnitOfWork: ...
