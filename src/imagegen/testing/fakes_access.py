"""In-memory fakes of the access repositories (tenants, API keys, idempotency records), used
by ``InMemoryUnitOfWork``: writes stay in the transaction until ``commit()``, reads see the
committed state plus the transaction's own writes, and what the SQL schema would refuse (a
duplicate tenant name, key id or idempotency key) raises ``ValueError`` on commit."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from imagegen.application.access_ports import IdempotencyRecord
from imagegen.domain.access import ApiKey, Tenant

IdemKey = tuple[str, str, str]


@attrs.define
class _AccessTables:
    tenants: dict[str, Tenant] = attrs.field(factory=dict)
    keys: dict[str, ApiKey] = attrs.field(factory=dict)
    idempotency: dict[IdemKey, IdempotencyRecord] = attrs.field(factory=dict)


class AccessState:
    """The committed access tables of one ``InMemoryUnitOfWorkFactory``."""

    def __init__(self) -> None:
        self.committed = _AccessTables()
        self.guard = threading.Lock()

    @classmethod
    def of(cls, owner: Any) -> AccessState:
        """The state kept on ``owner`` (the unit-of-work factory), created on first use."""
        state = getattr(owner, "_access_state", None)
        if state is None:
            state = cls()
            owner._access_state = state
        assert isinstance(state, AccessState)
        return state


class AccessTransaction:
    def __init__(self, state: AccessState) -> None:
        self.state = state
        self.pending = _AccessTables()
        self.inserted: dict[str, set[Any]] = {"tenants": set(), "keys": set(), "idempotency": set()}
        self.tenants = InMemoryTenantRepository(self)
        self.api_keys = InMemoryApiKeyRepository(self)
        self.idempotency = InMemoryIdempotencyRepository(self)

    def view(self, table: str) -> dict[Any, Any]:
        committed: dict[Any, Any] = getattr(self.state.committed, table)
        pending: dict[Any, Any] = getattr(self.pending, table)
        return {**committed, **pending}

    def write(self, table: str, key: Any, value: Any, *, insert: bool = False) -> None:
        getattr(self.pending, table)[key] = copy.deepcopy(value)
        if insert:
            self.inserted[table].add(key)

    def check(self) -> None:
        """Raise ``ValueError`` for what another transaction committed meanwhile."""
        committed = self.state.committed
        for table in ("tenants", "keys", "idempotency"):
            clash = self.inserted[table] & getattr(committed, table).keys()
            if clash:
                raise ValueError(
                    f"{table} {sorted(map(str, clash))} were stored by another transaction"
                )
        names = {t.name for t in committed.tenants.values()}
        for tenant_id in self.inserted["tenants"]:
            if self.pending.tenants[tenant_id].name in names:
                raise ValueError(f"a tenant named {self.pending.tenants[tenant_id].name!r} exists")

    def commit(self) -> None:
        with self.state.guard:
            self.check()
            for table in ("tenants", "keys", "idempotency"):
                getattr(self.state.committed, table).update(getattr(self.pending, table))
        self.clear()

    def clear(self) -> None:
        self.pending = _AccessTables()
        for keys in self.inserted.values():
            keys.clear()


class InMemoryTenantRepository:
    def __init__(self, tx: AccessTransaction) -> None:
        self._tx = tx

    async def add(self, tenant: Tenant) -> None:
        if tenant.id in self._tx.view("tenants"):
            raise ValueError(f"tenant {tenant.id} exists")
        self._tx.write("tenants", tenant.id, tenant, insert=True)

    async def get(self, tenant_id: str) -> Tenant | None:
        return copy.deepcopy(self._tx.view("tenants").get(tenant_id))

    async def get_by_name(self, name: str) -> Tenant | None:
        found = next((t for t in self._tx.view("tenants").values() if t.name == name), None)
        return copy.deepcopy(found)

    async def list(self) -> Sequence[Tenant]:
        return [
            copy.deepcopy(t) for t in sorted(self._tx.view("tenants").values(), key=lambda t: t.id)
        ]


class InMemoryApiKeyRepository:
    def __init__(self, tx: AccessTransaction) -> None:
        self._tx = tx

    async def add(self, key: ApiKey) -> None:
        if key.id in self._tx.view("keys"):
            raise ValueError(f"API key {key.id} exists")
        if key.tenant_id not in self._tx.view("tenants"):
            raise ValueError(f"API key {key.id} of an unknown tenant")
        self._tx.write("keys", key.id, key, insert=True)

    async def get(self, key_id: str) -> ApiKey | None:
        return copy.deepcopy(self._tx.view("keys").get(key_id))

    async def list(self, tenant_id: str) -> Sequence[ApiKey]:
        keys = [k for k in self._tx.view("keys").values() if k.tenant_id == tenant_id]
        return [copy.deepcopy(k) for k in sorted(keys, key=lambda k: (k.created_at, k.id))]

    async def save(self, key: ApiKey) -> None:
        stored = self._tx.view("keys").get(key.id)
        if stored is not None:
            self._tx.write("keys", key.id, attrs.evolve(stored, revoked_at=key.revoked_at))

    async def touch(self, key_id: str, at: datetime) -> None:
        stored = self._tx.view("keys").get(key_id)
        if stored is not None:
            self._tx.write("keys", key_id, attrs.evolve(stored, last_used_at=at))


class InMemoryIdempotencyRepository:
    def __init__(self, tx: AccessTransaction) -> None:
        self._tx = tx

    async def get(self, tenant_id: str, scope: str, key: str) -> IdempotencyRecord | None:
        return copy.deepcopy(self._tx.view("idempotency").get((tenant_id, scope, key)))

    async def add(self, record: IdempotencyRecord) -> None:
        key = (record.tenant_id, record.scope, record.key)
        if key in self._tx.view("idempotency"):
            raise ValueError(f"idempotency key {key} exists")
        self._tx.write("idempotency", key, record, insert=True)
