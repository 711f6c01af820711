"""``BufferedSession``: deferred inserts and updates by primary key, on SQLite and PostgreSQL
(where they go in one psycopg pipeline). What must hold: a transaction reads its own writes,
writes keep their order (also relative to ORM ``add``), a rollback loses them, a missing row
or a constraint violation is an error and nothing of the transaction stays, and values pass
through the same type processing as SQLAlchemy's own statements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.exc import IntegrityError, MultipleResultsFound
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from imagegen.infrastructure.persistence.engine import create_engine, upgrade_schema
from imagegen.infrastructure.persistence.orm import (
    AccountRecord,
    Base,
    LedgerEntryRecord,
    ReservationRecord,
)
from imagegen.infrastructure.persistence.writes import BufferedSession

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
ACCOUNTS = cast(Table, AccountRecord.__table__)
RESERVATIONS = cast(Table, ReservationRecord.__table__)
ENTRIES = cast(Table, LedgerEntryRecord.__table__)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        await upgrade_schema(engine)
        async with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                await connection.execute(table.delete())
        yield engine
    finally:
        await engine.dispose()


def sessions(engine: AsyncEngine) -> async_sessionmaker[BufferedSession]:
    return async_sessionmaker(engine, expire_on_commit=False, class_=BufferedSession)


def account(account_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "id": account_id,
        "tenant_id": f"tenant-{account_id}",
        "balance": 100,
        "reserved": 0,
        "created_at": T0,
        "updated_at": T0,
        **overrides,
    }


def reservation(reservation_id: str, account_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "id": reservation_id,
        "account_id": account_id,
        "amount": 10,
        "status": "active",
        "captured_amount": 0,
        "created_at": T0,
        "expires_at": T0 + timedelta(minutes=15),
        **overrides,
    }


async def rows(engine: AsyncEngine, table: Table) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(table).order_by(table.c.id))).all())


async def test_a_transaction_reads_its_own_deferred_writes(engine: AsyncEngine) -> None:
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])
        session.defer_update(ACCOUNTS, "a1", {"balance": 70, "reserved": 30}, what="account a1")
        found = (await session.execute(select(ACCOUNTS.c.balance, ACCOUNTS.c.reserved))).one()
        assert tuple(found) == (70, 30)
        await session.commit()
    assert [(r.id, r.balance, r.reserved) for r in await rows(engine, ACCOUNTS)] == [("a1", 70, 30)]


async def test_omitted_columns_get_their_python_side_defaults(engine: AsyncEngine) -> None:
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])  # has_budgets, plan_id left out
        session.defer_insert(RESERVATIONS, [reservation("r1", "a1")])  # included_images …
        await session.commit()
    (stored,) = await rows(engine, ACCOUNTS)
    assert stored.has_budgets is False
    assert stored.plan_id is None
    (held,) = await rows(engine, RESERVATIONS)
    assert (held.included_images, held.overage_images, held.holds) == (0, 0, None)


async def test_values_go_through_the_column_types(engine: AsyncEngine) -> None:
    """UTCDateTime converts to UTC (and refuses naive datetimes); JSON round-trips."""
    paris = timezone(timedelta(hours=1))
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])
        session.defer_insert(
            RESERVATIONS,
            [reservation("r1", "a1", created_at=T0.astimezone(paris), holds=["quota", "u:1"])],
        )
        await session.commit()
    (held,) = await rows(engine, RESERVATIONS)
    assert held.created_at == T0
    assert held.created_at.utcoffset() == timedelta(0)
    assert held.holds == ["quota", "u:1"]

    async with sessions(engine)() as session:
        session.defer_update(ACCOUNTS, "a1", {"updated_at": datetime(2026, 11, 2)})  # naive
        with pytest.raises(Exception, match="naive"):
            await session.commit()


async def test_an_update_of_a_missing_row_fails_and_nothing_of_the_transaction_stays(
    engine: AsyncEngine,
) -> None:
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])
        session.defer_update(ACCOUNTS, "ghost", {"balance": 1}, what="account ghost")
        with pytest.raises(LookupError, match="account ghost"):
            await session.commit()
        await session.rollback()
    assert await rows(engine, ACCOUNTS) == []


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(engine: AsyncEngine) -> None:
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])
        await session.commit()
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a2")])
        session.defer_insert(ACCOUNTS, [account("a1")])  # the primary key again
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()
    assert [r.id for r in await rows(engine, ACCOUNTS)] == ["a1"]


async def test_a_rollback_discards_what_was_deferred(engine: AsyncEngine) -> None:
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])
        await session.rollback()
        await session.commit()  # nothing left to send
    assert await rows(engine, ACCOUNTS) == []


async def test_orm_adds_keep_their_place_among_deferred_writes(engine: AsyncEngine) -> None:
    """An ORM object added after a deferred insert may reference it (and vice versa): the
    foreign keys hold on PostgreSQL, which checks them statement by statement."""
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])
        session.add(reservation_record("r1", "a1"))  # references the deferred account
        session.defer_insert(
            ENTRIES,
            [
                {
                    "id": "e1",
                    "account_id": "a1",
                    "kind": "capture",
                    "amount": -10,
                    "balance_after": 90,
                    "reservation_id": "r1",  # unique, after the ORM-added reservation
                    "created_at": T0,
                }
            ],
        )
        await session.commit()
    assert [r.id for r in await rows(engine, RESERVATIONS)] == ["r1"]
    assert [r.reservation_id for r in await rows(engine, ENTRIES)] == ["r1"]


def reservation_record(reservation_id: str, account_id: str) -> ReservationRecord:
    return ReservationRecord(**reservation(reservation_id, account_id))


operations = st.lists(
    st.tuples(st.sampled_from(["insert", "update", "read"]), st.integers(0, 3), st.integers(0, 50)),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=operations)
async def test_deferred_writes_match_writing_at_once(engine: AsyncEngine, steps: Any) -> None:
    """Any sequence of inserts, updates and reads in one transaction leaves the rows (and
    shows the reads) a model that applies every write at once predicts."""
    async with engine.begin() as connection:
        await connection.execute(ACCOUNTS.delete())
    model: dict[str, int] = {}
    async with sessions(engine)() as session:
        for kind, number, value in steps:
            account_id = f"a{number}"
            if kind == "insert" and account_id not in model:
                session.defer_insert(ACCOUNTS, [account(account_id, balance=value)])
                model[account_id] = value
            elif kind == "update" and account_id in model:
                session.defer_update(ACCOUNTS, account_id, {"balance": value})
                model[account_id] = value
            elif kind == "read":
                seen = await session.execute(select(ACCOUNTS.c.id, ACCOUNTS.c.balance))
                assert dict(tuple(r) for r in seen.all()) == model
        await session.commit()
    assert {r.id: r.balance for r in await rows(engine, ACCOUNTS)} == model
    async with engine.connect() as connection:
        count = (await connection.execute(select(func.count()).select_from(ACCOUNTS))).scalar()
    assert count == len(model)


# --- pooled connections: pinged only after being idle -------------------------------------


async def _backend_pid(engine: AsyncEngine) -> int:
    from sqlalchemy import text

    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(url: str, pid: int) -> None:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        # With a timeout, it returns once the backend has really exited.
        await admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


@pytest.mark.postgres
async def test_an_idle_pooled_connection_that_died_is_replaced_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import DBAPIError

    from imagegen.infrastructure.persistence import engine as engine_module

    engine = create_engine(postgres_url)
    try:
        monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 3600.0)
        first = await _backend_pid(engine)
        await _terminate(postgres_url, first)
        # Not idle long enough to be pinged: the dead connection is used, and fails.
        with pytest.raises(DBAPIError):
            await _backend_pid(engine)

        monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)
        second = await _backend_pid(engine)  # the pool reconnected after that failure
        await _terminate(postgres_url, second)
        # Idle past the threshold: pinged at checkout, found dead, replaced; the use works.
        third = await _backend_pid(engine)
        assert third not in (first, second)
    finally:
        await engine.dispose()


_BY_ACCOUNT = select(RESERVATIONS).where(RESERVATIONS.c.account_id == bindparam("account"))


async def test_one_or_none_reads_rows_through_the_column_types(engine: AsyncEngine) -> None:
    """On PostgreSQL ``one_or_none`` bypasses SQLAlchemy's execution: the row must come back
    as SQLAlchemy would give it (UTC-aware datetimes, JSON decoded), seeing deferred writes."""
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])
        session.defer_insert(RESERVATIONS, [reservation("r1", "a1", holds=["quota"])])
        row = await session.one_or_none(_BY_ACCOUNT, {"account": "a1"})
        assert row is not None
        assert (row.id, row.holds, row.resolved_at) == ("r1", ["quota"], None)
        assert row.created_at == T0
        assert row.created_at.utcoffset() == timedelta(0)
        assert await session.one_or_none(_BY_ACCOUNT, {"account": "nobody"}) is None

        session.defer_insert(RESERVATIONS, [reservation("r2", "a1")])
        with pytest.raises(MultipleResultsFound):
            await session.one_or_none(_BY_ACCOUNT, {"account": "a1"})


def _count_sync(session: Any) -> int:
    return int(session.execute(select(func.count()).select_from(ACCOUNTS)).scalar_one())


@pytest.mark.parametrize("entry", ["get", "scalar", "scalars", "stream", "run_sync", "connection"])
async def test_every_way_into_the_database_sends_the_deferred_writes_first(
    engine: AsyncEngine, entry: str
) -> None:
    count = select(func.count()).select_from(ACCOUNTS)
    async with sessions(engine)() as session:
        session.defer_insert(ACCOUNTS, [account("a1")])
        if entry == "get":
            assert await session.get(AccountRecord, "a1") is not None
        elif entry == "scalar":
            assert await session.scalar(count) == 1
        elif entry == "scalars":
            assert list(await session.scalars(count)) == [1]
        elif entry == "stream":
            assert [row async for row in await session.stream(count)] == [(1,)]
        elif entry == "run_sync":
            assert await session.run_sync(_count_sync) == 1
        else:
            connection = await session.connection()
            assert (await connection.execute(count)).scalar_one() == 1
        await session.rollback()
