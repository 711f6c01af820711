"""The per-process API key cache on PostgreSQL (``NotifiedKeyCache``): a key read once is
authenticated without a database read, and a revocation — from any process — reaches the
cache as it commits (LISTEN/NOTIFY), never when it rolls back; while the cache cannot hear
(before it listens, after its connection broke) it holds nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from imagegen.bootstrap.access import Access, build_access
from imagegen.bootstrap.container import build_container
from imagegen.bootstrap.settings import Settings
from imagegen.domain.errors import AuthenticationRequired
from imagegen.infrastructure.persistence.key_cache import NotifiedKeyCache

pytestmark = pytest.mark.postgres


class CountingUow:
    """The unit of work factory, counting the units of work opened."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.opened = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.opened += 1
        return self.inner(**kwargs)


@pytest.fixture
async def access(tmp_path: Path, postgres_url: str) -> AsyncIterator[Access]:
    container = build_container(
        Settings(data_dir=tmp_path / "data", database_url=postgres_url)  # type: ignore[arg-type]
    )
    from imagegen.infrastructure.persistence.engine import upgrade_schema

    await upgrade_schema(container.gateways.engine())
    built = build_access(container)
    try:
        yield built
    finally:
        await built.aclose()
        await container.gateways.engine().dispose()


def cache_of(access: Access) -> NotifiedKeyCache:
    assert access.key_cache is not None, "PostgreSQL with the default settings has a cache"
    return access.key_cache


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def listening(access: Access) -> NotifiedKeyCache:
    cache = cache_of(access)
    cache.get("key_nothing")  # starts the listener
    await until(lambda: cache.listening)
    return cache


async def issued(access: Access, name: str = "acme") -> tuple[str, str]:
    tenant = await access.create_tenant.execute(name)
    key = await access.create_key.execute(tenant.id, "creator")
    return key.key.id, key.secret


async def test_a_key_read_once_is_authenticated_without_reading_the_database(
    access: Access,
) -> None:
    await listening(access)
    key_id, secret = await issued(access)
    counting = CountingUow(access.authenticate._uow)
    access.authenticate._uow = counting

    first = await access.authenticate.execute(secret)
    opened_by_first = counting.opened  # the read, and the last-used write
    second = await access.authenticate.execute(secret)

    assert first == second
    assert first.key_id == key_id
    assert opened_by_first >= 1
    assert counting.opened == opened_by_first  # the second one read nothing
    with pytest.raises(AuthenticationRequired):  # the secret is still checked every time
        await access.authenticate.execute(secret[:-2] + ("AA" if secret[-2:] != "AA" else "BB"))


async def test_a_revocation_from_elsewhere_reaches_the_cache_when_it_commits(
    access: Access,
) -> None:
    cache = await listening(access)
    key_id, secret = await issued(access)
    await access.authenticate.execute(secret)
    assert cache.get(key_id) is not None

    # RevokeApiKey (what `imagegen keys revoke` runs) does not know of this process's cache:
    # only the notification can tell it.
    await access.revoke_key.execute(key_id)

    await until(lambda: cache.get(key_id) is None)
    with pytest.raises(AuthenticationRequired, match="revoked"):
        await access.authenticate.execute(secret)


async def test_a_rolled_back_revocation_leaves_the_key_cached(access: Access) -> None:
    cache = await listening(access)
    key_id, secret = await issued(access, "alpha")
    other_id, _ = await issued(access, "beta")
    await access.authenticate.execute(secret)

    uow: Any = access.authenticate._uow
    async with uow() as unit:
        key = await unit.api_keys.get(key_id)
        key.revoke(key.created_at)
        await unit.api_keys.save(key)
        await unit.rollback()
    # A later committed revocation of another key: once its notification is in, any
    # notification of the rolled-back one would have been too (they are delivered in order).
    before = cache.mark()
    await access.revoke_key.execute(other_id)
    await until(lambda: cache.mark() != before)
    assert cache.get(key_id) is not None
    assert (await access.authenticate.execute(secret)).key_id == key_id


async def test_a_read_that_raced_an_invalidation_is_not_kept(access: Access) -> None:
    cache = await listening(access)
    key_id, _secret = await issued(access, "alpha")
    other_id, _ = await issued(access, "beta")
    uow: Any = access.authenticate._uow
    async with uow(read_only=True) as unit:
        key = await unit.api_keys.get(key_id)

    mark = cache.mark()  # the read "began" here …
    await access.revoke_key.execute(other_id)  # … an invalidation arrives meanwhile …
    await until(lambda: cache.mark() != mark)
    cache.put(key, mark)  # … so what it read is not kept
    assert cache.get(key_id) is None

    cache.put(key, cache.mark())
    assert cache.get(key_id) is not None


async def test_the_admin_revoking_a_key_over_http_drops_it_in_this_process_at_once(
    access: Access,
) -> None:
    cache = await listening(access)
    key_id, secret = await issued(access)
    principal = await access.authenticate.execute(secret)
    assert cache.get(key_id) is not None

    manage: Any = access.guard.manage_keys
    await manage.revoke(principal.tenant_id, key_id)

    assert cache.get(key_id) is None  # no waiting for the notification
    with pytest.raises(AuthenticationRequired, match="revoked"):
        await access.authenticate.execute(secret)


async def test_when_its_connection_breaks_the_cache_holds_nothing_until_it_listens_again(
    access: Access, postgres_url: str
) -> None:
    import psycopg

    cache = await listening(access)
    key_id, secret = await issued(access)
    await access.authenticate.execute(secret)
    assert cache.get(key_id) is not None
    listener: Any = cache._connection
    pid = listener.info.backend_pid

    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))

    await until(lambda: not cache.listening)
    assert cache.get(key_id) is None
    cache.put(await key_of(access, key_id), cache.mark())  # deaf: not kept
    assert cache.get(key_id) is None
    assert (await access.authenticate.execute(secret)).key_id == key_id  # reads the database

    await until(lambda: cache.listening)  # reconnected (retry after 1 s), empty
    assert cache.get(key_id) is None
    await access.authenticate.execute(secret)
    assert cache.get(key_id) is not None


async def key_of(access: Access, key_id: str) -> Any:
    uow: Any = access.authenticate._uow
    async with uow(read_only=True) as unit:
        return await unit.api_keys.get(key_id)


async def test_no_cache_on_sqlite_or_when_turned_off(tmp_path: Path, postgres_url: str) -> None:
    for settings in (
        Settings(data_dir=tmp_path / "a"),
        Settings(data_dir=tmp_path / "b", database_url=postgres_url, api_key_cache=False),  # type: ignore[arg-type]
    ):
        container = build_container(settings)
        assert build_access(container).key_cache is None
        await container.gateways.engine().dispose()
