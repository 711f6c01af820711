"""The SQLite driver (``persistence.sqlite_driver``): one worker-thread call per statement, and
the transaction semantics the engine relies on (``BEGIN IMMEDIATE`` before the first read,
nothing left open after a cancelled statement)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen.infrastructure.persistence import sqlite_driver
from imagegen.infrastructure.persistence.engine import READ_ONLY, create_engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    yield engine
    await engine.dispose()


def _outside(engine: AsyncEngine) -> sqlite3.Connection:
    """A plain connection from "another process": it must not wait for locks."""
    database = engine.url.database
    assert database is not None
    return sqlite3.connect(database, timeout=0, isolation_level=None)


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = sqlite_driver._Worker.call

    async def counting(self: Any, function: Any) -> Any:
        calls[0] += 1
        return await original(self, function)

    monkeypatch.setattr(sqlite_driver._Worker, "call", counting)
    return calls


async def test_uses_this_driver(engine: AsyncEngine) -> None:
    assert engine.dialect.driver == sqlite_driver.DRIVER


async def test_worker_calls_per_statement(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writing transaction whose lock is free: BEGIN IMMEDIATE and the statements on the
    caller's thread, COMMIT on the worker. A reading transaction: one call per statement."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))  # the pool's first checkout is done
        await connection.rollback()
    calls = _count_calls(monkeypatch)
    async with engine.connect() as connection:
        await connection.execute(text("INSERT INTO t (v) VALUES ('a')"))  # with BEGIN IMMEDIATE
        rows = (await connection.execute(text("SELECT v FROM t"))).all()
        await connection.execute(text("UPDATE t SET v = 'b'"))
        assert rows == [("a",)]
        assert calls[0] == 0
        await connection.commit()
        assert calls[0] == 1
    assert calls[0] == 1  # returned to the pool: no transaction open, no rollback call
    reads = engine.execution_options(**{READ_ONLY: True})
    async with reads.connect() as connection:
        await connection.execute(text("SELECT v FROM t"))
        await connection.execute(text("SELECT v FROM t"))
        assert calls[0] == 3
        await connection.rollback()
    assert calls[0] == 4


async def test_a_writer_that_must_wait_for_the_lock_waits_on_the_worker(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = _outside(engine)
    try:
        outside.execute("BEGIN IMMEDIATE")
        calls = _count_calls(monkeypatch)

        async def write() -> None:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO t (v) VALUES ('w')"))
                await connection.execute(text("UPDATE t SET v = 'x'"))

        task = asyncio.create_task(write())
        await asyncio.sleep(0.2)
        assert calls[0] == 1  # BEGIN IMMEDIATE and the INSERT, waiting on the worker
        assert not task.done()
        outside.execute("COMMIT")
        await asyncio.wait_for(task, 10)
        assert calls[0] == 2  # the UPDATE ran here; then COMMIT
        # The connection's busy timeout is what it was (the inline attempt sets it to 0).
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            timeout = raw.driver_connection.execute("PRAGMA busy_timeout").fetchone()
            assert timeout == (30000,)
    finally:
        outside.close()


async def test_writer_holds_the_write_lock_from_its_first_statement(engine: AsyncEngine) -> None:
    outside = _outside(engine)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SELECT count(*) FROM t"))  # a read, first
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                outside.execute("BEGIN IMMEDIATE")
        outside.execute("BEGIN IMMEDIATE")  # released with the commit
        outside.execute("ROLLBACK")
    finally:
        outside.close()


async def test_readers_do_not_take_the_write_lock(engine: AsyncEngine) -> None:
    outside = _outside(engine)
    try:
        reads = engine.execution_options(**{READ_ONLY: True})
        async with reads.connect() as connection:
            await connection.execute(text("SELECT count(*) FROM t"))
            outside.execute("BEGIN IMMEDIATE")
            outside.execute("INSERT INTO t (v) VALUES ('x')")
            outside.execute("COMMIT")
            await connection.rollback()
    finally:
        outside.close()


async def test_a_waiting_writer_gets_the_lock_once_it_is_free(engine: AsyncEngine) -> None:
    outside = _outside(engine)
    try:
        outside.execute("BEGIN IMMEDIATE")

        async def write() -> None:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO t (v) VALUES ('late')"))

        task = asyncio.create_task(write())
        await asyncio.sleep(0.2)
        assert not task.done()  # waiting for the lock, without blocking the event loop
        outside.execute("COMMIT")
        await asyncio.wait_for(task, 10)
    finally:
        outside.close()
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT v FROM t"))).scalars().all() == ["late"]


async def test_uncommitted_work_is_rolled_back(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("INSERT INTO t (v) VALUES ('gone')"))
        await connection.rollback()

    async def fail_in_transaction() -> None:
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t (v) VALUES ('gone too')"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await fail_in_transaction()
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM t"))).scalar() == 0


async def test_errors_are_sqlalchemy_errors(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO t (id, v) VALUES (1, 'a')"))
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t (id, v) VALUES (1, 'b')"))
    with pytest.raises(OperationalError):
        async with engine.begin() as connection:
            await connection.execute(text("SELECT * FROM missing"))
    async with engine.connect() as connection:  # the failed transactions left nothing open
        assert (await connection.execute(text("SELECT v FROM t"))).scalars().all() == ["a"]


async def test_results_rowcount_and_returning(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": "a"}, {"v": "b"}])
        result = await connection.execute(text("UPDATE t SET v = v || '!'"))
        assert result.rowcount == 2
        returned = await connection.execute(text("INSERT INTO t (v) VALUES ('c') RETURNING id"))
        assert returned.scalar_one() == 3
        rows = (await connection.execute(text("SELECT id, v FROM t ORDER BY id"))).all()
    assert [tuple(r) for r in rows] == [(1, "a!"), (2, "b!"), (3, "c")]


async def test_a_cancelled_statement_leaves_no_transaction_open(engine: AsyncEngine) -> None:
    """The caller stops waiting; the statement (and its BEGIN) still runs on the worker. The
    rollback that follows must not take the connection for idle before it has."""
    outside = _outside(engine)
    outside.execute("BEGIN IMMEDIATE")  # holds the write lock: the next writer waits

    async def write() -> None:
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t (v) VALUES ('cancelled')"))

    task = asyncio.create_task(write())
    await asyncio.sleep(0.2)
    task.cancel()
    outside.execute("COMMIT")
    with pytest.raises(asyncio.CancelledError):
        await task
    try:
        for _ in range(100):  # the pool's connection must end up with no write lock held
            try:
                outside.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                await asyncio.sleep(0.05)
            else:
                outside.execute("ROLLBACK")
                break
        else:
            pytest.fail("the cancelled writer kept the write lock")
    finally:
        outside.close()
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM t"))).scalar() == 0


async def test_rollback_waits_for_calls_still_queued(tmp_path: Path) -> None:
    """A call nobody waits for any more (its caller was cancelled) may still open a
    transaction: a rollback issued meanwhile must run after it, not be skipped."""
    import threading

    from sqlalchemy.util.concurrency import greenlet_spawn

    connection = await greenlet_spawn(sqlite_driver.DBAPI().connect, str(tmp_path / "raw.db"))
    try:
        gate = threading.Event()
        connection._worker.call_nowait(gate.wait)  # the worker is busy until the gate opens
        connection._worker.call_nowait(lambda: connection._sqlite.execute("BEGIN IMMEDIATE"))
        rollback = asyncio.create_task(greenlet_spawn(connection.rollback))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(rollback, 10)
        assert connection._worker.idle
        assert not connection._sqlite.in_transaction
    finally:
        await greenlet_spawn(connection.close)
