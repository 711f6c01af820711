"""Tenancy and access in the core: the permission table, API keys (format, hashing, rotation,
revocation, last use written at most once a minute), and the HTTP app mounted inside another
app (no lifespan: it starts on the first request)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from imagegen import AsyncImageGen, AuthenticationRequired, PermissionDenied, Settings
from imagegen.application.commands import GrantCreditsCommand
from imagegen.bootstrap.access import Access, build_access
from imagegen.bootstrap.container import build_container
from imagegen.domain.access import (
    PERMISSIONS,
    ApiKey,
    Permission,
    Principal,
    Role,
    hash_key,
    key_id_of,
)
from imagegen.domain.errors import ApiKeyNotFound, InvalidParameter, TenantNotFound
from imagegen.testing import InMemoryBlobStorage, InMemoryUnitOfWorkFactory, ManualClock


def test_the_permission_table() -> None:
    assert PERMISSIONS[Role.ADMIN] == frozenset(Permission)
    reads = {p for p in Permission if p.value.endswith(":read")} - {Permission.USAGE_READ}
    assert PERMISSIONS[Role.VIEWER] == reads
    assert PERMISSIONS[Role.REVIEWER] == reads | {Permission.ASSETS_CREATE, Permission.USAGE_READ}
    assert PERMISSIONS[Role.CREATOR] == reads | {
        Permission.ASSETS_CREATE,
        Permission.GENERATIONS_CREATE,
    }


@pytest.mark.parametrize(
    "key",
    ["", "ig_live_", "ig_live_abc", "ig_live__secret", "ig_live_a-b_secret", "sk_live_abc_secret"],
)
def test_a_key_not_in_our_format_is_refused_without_repeating_it(key: str) -> None:
    with pytest.raises(AuthenticationRequired) as raised:
        key_id_of(key)
    assert key not in str(raised.value) or not key


@pytest.fixture(params=["sql", "memory"])
async def access(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Access, ManualClock]]:
    """The access use cases over SQLite, and over the in-memory fakes."""
    container = build_container(Settings(data_dir=tmp_path, starting_credits=10))
    clock = ManualClock()
    container.gateways.clock.override(clock)
    if request.param == "memory":
        container.gateways.uow.override(InMemoryUnitOfWorkFactory())
        container.gateways.storage.override(InMemoryBlobStorage())
    async with AsyncImageGen(container=container):
        yield build_access(container), clock


async def test_a_key_is_shown_once_stored_hashed_and_stops_working_when_revoked(
    access: tuple[Access, ManualClock],
) -> None:
    services, _ = access
    tenant = await services.create_tenant.execute("acme")
    issued = await services.create_key.execute("acme", "Creator", "ci")
    assert key_id_of(issued.secret) == issued.key.id
    assert issued.secret.startswith(issued.key.public_prefix + "_")
    assert issued.secret not in repr(issued)
    assert issued.key.key_hash not in repr(issued.key)
    stored = (await services.list_keys.execute(tenant.id))[0]
    assert isinstance(stored, ApiKey)
    assert stored.key_hash == hash_key(issued.secret) != issued.secret
    principal = await services.authenticate.execute(issued.secret)
    assert principal == Principal(tenant.id, issued.key.id, Role.CREATOR)

    await services.revoke_key.execute(issued.key.id)
    with pytest.raises(AuthenticationRequired, match="revoked"):
        await services.authenticate.execute(issued.secret)
    with pytest.raises(ApiKeyNotFound):
        await services.rotate_key.execute(issued.key.id)  # revoked keys are not rotated
    with pytest.raises(InvalidParameter):
        await services.create_tenant.execute("acme")
    with pytest.raises(TenantNotFound):
        await services.create_key.execute("nobody", "viewer")


async def test_rotation_revokes_the_old_key_and_keeps_tenant_role_and_name(
    access: tuple[Access, ManualClock],
) -> None:
    services, _ = access
    await services.create_tenant.execute("acme")
    old = await services.create_key.execute("acme", "viewer", "dashboard")
    new = await services.rotate_key.execute(old.key.id)
    assert (new.key.tenant_id, new.key.role, new.key.name) == (
        old.key.tenant_id,
        Role.VIEWER,
        "dashboard",
    )
    assert new.key.replaces == old.key.id
    assert new.secret != old.secret
    with pytest.raises(AuthenticationRequired):
        await services.authenticate.execute(old.secret)
    assert (await services.authenticate.execute(new.secret)).key_id == new.key.id


async def test_last_use_is_written_at_most_once_a_minute(
    access: tuple[Access, ManualClock],
) -> None:
    services, clock = access
    await services.create_tenant.execute("acme")
    issued = await services.create_key.execute("acme", "viewer")

    async def last_used() -> object:
        return (await services.list_keys.execute("acme"))[0].last_used_at

    first = clock.now()
    await services.authenticate.execute(issued.secret)
    assert await last_used() == first
    clock.advance(seconds=59)
    await services.authenticate.execute(issued.secret)
    assert await last_used() == first
    clock.advance(seconds=2)
    await services.authenticate.execute(issued.secret)
    assert await last_used() == clock.now()


async def test_the_guard_checks_the_role_before_anything_runs(
    access: tuple[Access, ManualClock],
) -> None:
    services, _ = access
    tenant = await services.create_tenant.execute("acme")
    creator = Principal(tenant.id, "key_x", Role.CREATOR)
    with pytest.raises(PermissionDenied, match="credits:grant"):
        await services.guard.grant_credits(creator, GrantCreditsCommand(amount=5), None)
    admin = Principal(tenant.id, "key_y", Role.ADMIN)
    # the command's tenant is replaced by the caller's
    outcome = await services.guard.grant_credits(
        admin, GrantCreditsCommand(amount=5, tenant_id="someone-else"), "k"
    )
    assert outcome.balance.tenant_id == tenant.id
    assert outcome.balance.balance == 15
    assert (await services.guard.balance(admin)).balance == 15


async def test_the_app_mounted_inside_another_starts_on_its_first_request(tmp_path: Path) -> None:
    from fastapi import FastAPI

    from imagegen.interfaces.http import create_app

    settings = Settings(data_dir=tmp_path)
    container = build_container(settings)
    async with AsyncImageGen(container=container):
        services = build_access(container)
        await services.create_tenant.execute("acme")
        key = (await services.create_key.execute("acme", "viewer")).secret

    host = FastAPI()
    service = create_app(settings)
    host.mount("/images-api", service)
    transport = httpx.ASGITransport(app=host)  # runs no lifespan, as a host app may not
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
        response = await client.get(
            "/images-api/v1/credits/balance", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200
        assert response.json()["available"] == 100
        assert (await client.get("/images-api/openapi.json")).status_code == 200
    await service.state.imagegen.aclose()


async def test_the_service_runs_on_the_in_memory_fakes(tmp_path: Path) -> None:
    from imagegen.interfaces.http import create_app

    container = build_container(Settings(data_dir=tmp_path, auto_migrate=False))
    container.gateways.uow.override(InMemoryUnitOfWorkFactory())
    container.gateways.storage.override(InMemoryBlobStorage())
    services = build_access(container)
    await services.create_tenant.execute("acme")
    key = (await services.create_key.execute("acme", "creator")).secret
    app = create_app(container)
    transport = httpx.ASGITransport(app=app)
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        made = await client.post(
            "/v1/generations", json={"prompt": "a fox", "size": "64x64"}, headers=auth
        )
        assert made.status_code == 201, made.text
        image = await client.get(made.json()["images"][0]["content_url"], headers=auth)
        assert image.content.startswith(b"\x89PNG")
        assert (await client.get("/v1/credits/balance", headers=auth)).json()["available"] == 99
    await app.state.imagegen.aclose()
    assert tmp_path.exists()
    assert not list(tmp_path.iterdir())


def test_importing_imagegen_or_its_cli_loads_no_web_framework() -> None:
    code = (
        "import sys, imagegen, imagegen.interfaces.cli\n"
        "loaded = {'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
