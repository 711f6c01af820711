"""Managing a tenant's API keys through the ``AccessGuard`` (what ``/v1/keys`` calls): only a
principal with ``keys:manage`` (the admin role) gets past it, and nothing runs before the
check; everything is scoped to the principal's tenant; idempotency keys make one key, also
when two requests with the same one race (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from imagegen import AsyncImageGen, AuthenticationRequired, PermissionDenied, Settings
from imagegen.application.guard import AccessGuard
from imagegen.bootstrap.access import Access, build_access
from imagegen.bootstrap.container import build_container
from imagegen.domain.access import PERMISSIONS, Permission, Principal, Role
from imagegen.domain.errors import ApiKeyNotFound, IdempotencyConflict, InvalidParameter
from imagegen.testing import InMemoryBlobStorage, InMemoryUnitOfWorkFactory


def test_only_admins_may_manage_keys() -> None:
    assert [r for r in Role if Permission.KEYS_MANAGE in PERMISSIONS[r]] == [Role.ADMIN]


@pytest.fixture(params=["sql", "memory"])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Access]:
    container = build_container(Settings(data_dir=tmp_path))
    if request.param == "memory":
        container.gateways.uow.override(InMemoryUnitOfWorkFactory())
        container.gateways.storage.override(InMemoryBlobStorage())
    async with AsyncImageGen(container=container):
        yield build_access(container)


async def _principal(services: Access, tenant: str, role: str) -> Principal:
    return (await _caller(services, tenant, role))[0]


async def _caller(services: Access, tenant: str, role: str) -> tuple[Principal, str]:
    issued = await services.create_key.execute(tenant, role, role)
    return await services.authenticate.execute(issued.secret), issued.secret


def _calls(key_id: str) -> list[Callable[[AccessGuard, Principal], Awaitable[Any]]]:
    return [
        lambda g, p: g.create_key(p, "viewer"),
        lambda g, p: g.create_key(p, "admin", "x", "idem-1"),
        lambda g, p: g.keys(p),
        lambda g, p: g.key(p, key_id),
        lambda g, p: g.rotate_key(p, key_id),
        lambda g, p: g.rotate_key(p, key_id, "idem-2"),
        lambda g, p: g.revoke_key(p, key_id),
        lambda g, p: g.revoke_key(p, p.key_id),
    ]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.CREATOR, Role.REVIEWER])
async def test_the_guard_refuses_every_key_call_without_keys_manage(
    services: Access, role: Role
) -> None:
    tenant = await services.create_tenant.execute("acme")
    principal = await _principal(services, tenant.id, role.value)
    target = await services.create_key.execute(tenant.id, "viewer", "target")
    before = await services.list_keys.execute(tenant.id)
    for call in _calls(target.key.id):
        with pytest.raises(PermissionDenied, match="keys:manage") as raised:
            await call(services.guard, principal)
        assert raised.value.details == {"permission": "keys:manage", "role": role.value}
    assert await services.list_keys.execute(tenant.id) == before  # nothing ran
    await services.authenticate.execute(target.secret)


async def test_the_guard_lets_an_admin_manage_its_own_tenants_keys_only(services: Access) -> None:
    acme = await services.create_tenant.execute("acme")
    other = await services.create_tenant.execute("other")
    admin, admin_secret = await _caller(services, acme.id, "admin")
    theirs = await services.create_key.execute(other.id, "viewer", "theirs")

    made = await services.guard.create_key(admin, "creator", " ci ")
    assert made.secret is not None
    assert (made.key.tenant_id, made.key.role, made.key.name) == (acme.id, Role.CREATOR, "ci")
    assert (await services.authenticate.execute(made.secret)).tenant_id == acme.id
    fetched = await services.guard.key(admin, made.key.id)
    assert (fetched.id, fetched.key_hash) == (made.key.id, made.key.key_hash)
    assert fetched.last_used_at is not None  # just used, by the line above
    page = await services.guard.keys(admin, limit=1)
    assert [k.id for k in page.items] == [made.key.id]
    rest = await services.guard.keys(admin, limit=10, cursor=page.next_cursor)
    assert [k.id for k in rest.items] == [admin.key_id]
    assert rest.next_cursor is None

    # another tenant's key is not found, whatever the call; it stays untouched
    for call in (services.guard.key, services.guard.rotate_key, services.guard.revoke_key):
        with pytest.raises(ApiKeyNotFound):
            await call(admin, theirs.key.id)
    await services.authenticate.execute(theirs.secret)

    rotated = await services.guard.rotate_key(admin, made.key.id)
    assert rotated.key.replaces == made.key.id
    assert rotated.secret is not None
    with pytest.raises(AuthenticationRequired):
        await services.authenticate.execute(made.secret)
    revoked = await services.guard.revoke_key(admin, rotated.key.id)
    assert revoked.revoked_at is not None
    with pytest.raises(AuthenticationRequired, match="revoked"):
        await services.authenticate.execute(rotated.secret)

    # the caller's own key: revoked, and the next authentication refuses it
    await services.guard.revoke_key(admin, admin.key_id)
    with pytest.raises(AuthenticationRequired, match="revoked"):
        await services.authenticate.execute(admin_secret)
    with pytest.raises(InvalidParameter):
        await services.guard.keys(admin, limit=0)
    with pytest.raises(InvalidParameter):
        await services.guard.keys(admin, cursor="!!")


async def test_an_idempotency_key_makes_one_key(services: Access) -> None:
    acme = await services.create_tenant.execute("acme")
    admin = await _principal(services, acme.id, "admin")
    first = await services.guard.create_key(admin, "viewer", "v", "same")
    replay = await services.guard.create_key(admin, "viewer", "v", "same")
    assert (replay.key.id, replay.secret, replay.replayed) == (first.key.id, None, True)
    assert first.secret is not None
    assert first.secret not in repr(first)
    with pytest.raises(IdempotencyConflict):
        await services.guard.create_key(admin, "creator", "v", "same")
    assert len(await services.list_keys.execute(acme.id)) == 2


@pytest.fixture
async def sql_services(settings: Settings) -> AsyncIterator[Access]:
    """Over SQLite and PostgreSQL (``settings`` from conftest)."""
    container = build_container(settings)
    async with AsyncImageGen(container=container):
        yield build_access(container)


async def test_racing_requests_with_one_idempotency_key_make_one_key(
    sql_services: Access,
) -> None:
    acme = await sql_services.create_tenant.execute("acme")
    admin = await _principal(sql_services, acme.id, "admin")
    outcomes = await asyncio.gather(
        *(sql_services.guard.create_key(admin, "viewer", "race", "race-1") for _ in range(4))
    )
    assert len({o.key.id for o in outcomes}) == 1
    assert sum(not o.replayed for o in outcomes) == 1
    assert [o.secret is None for o in outcomes] == [o.replayed for o in outcomes]
    assert len(await sql_services.list_keys.execute(acme.id)) == 2
