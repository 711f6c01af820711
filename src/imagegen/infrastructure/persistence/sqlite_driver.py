"""An asyncio SQLite driver for SQLAlchemy: the standard ``sqlite3`` module on one worker thread
per connection, with at most one thread hand-off per statement.

SQLAlchemy's ``aiosqlite`` adaptation sends every cursor operation to the driver's thread
separately (open the cursor, execute, fetch the rows, close it): three or four round trips
through the event loop per statement. Here a statement is one round trip: the worker thread
opens a cursor, executes, fetches every row and closes the cursor in a single call, and the
adapter hands SQLAlchemy the buffered result (as SQLAlchemy's async adapters always do).

``BEGIN`` / ``BEGIN IMMEDIATE`` travel with the transaction's first statement, in the same
hand-off and in that order, so the write lock is still taken before anything is read. A
transaction that never sent a statement ends without a round trip, and so does a rollback
with no transaction open (the pool's reset of a connection after ``COMMIT``).

Once ``BEGIN IMMEDIATE`` has returned, the connection holds the database's write lock (and its
read snapshot): the statements that follow cannot wait for another connection, and work on
pages in memory (the transaction's writes stay in SQLite's cache until ``COMMIT``). They run
on the calling thread, which costs less than handing them to the worker and back (tens of
microseconds against a round trip through the event loop and two thread switches). So does
``BEGIN IMMEDIATE`` itself when the lock is free: it is tried here with a busy timeout of 0,
and only when another connection holds the lock does it go to the worker, to wait there (up
to the busy timeout) without holding up the event loop. What can wait stays on the worker:
``COMMIT`` (which may checkpoint the WAL and fsync), ``ROLLBACK``, and every statement of a
read-only (deferred) transaction, where a long query must not hold up the event loop. A
statement that runs long inside a write transaction would hold every writer of every
process up anyway.

Semantics are those of ``sqlite3`` with ``isolation_level=None`` (no implicit transactions;
the engine issues ``BEGIN`` itself, see ``engine._configure_sqlite``); the connection is used
by one caller at a time, and calls run in the order they were made.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

from sqlalchemy import pool
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import AdaptedConnection
from sqlalchemy.util import concurrency as _concurrency

DRIVER: Final = "imagegen_sqlite"
THREAD_NAME: Final = "imagegen-sqlite"
_BEGIN_STATEMENTS: Final = frozenset({"BEGIN", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"})
_WRITE_BEGINS: Final = frozenset({"BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"})
_BUSY_CODES: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary result codes)
# Statements that end a transaction or may do long I/O: never run on the calling thread.
_WORKER_ONLY: Final = ("COMMIT", "END", "ROLLBACK", "RELEASE", "PRAGMA", "VACUUM", "ANALYZE")

T = TypeVar("T")

# SQLAlchemy's "wait for this coroutine from inside the greenlet": ``await_`` in SQLAlchemy
# 2.1, ``await_only`` in 2.0.
_await: Callable[[Awaitable[Any]], Any] = (
    getattr(_concurrency, "await_", None) or _concurrency.__dict__["await_only"]
)


def await_(awaitable: Awaitable[T]) -> T:
    result: T = _await(awaitable)
    return result


# (loop, future, call): the future of the loop that waits for the call; None, None for a call
# nobody waits for. None alone stops the worker.
_Item = (
    tuple[asyncio.AbstractEventLoop | None, "asyncio.Future[Any] | None", Callable[[], Any]] | None
)
_Result = tuple[Any, int, int | None, list[Any]]  # description, rowcount, lastrowid, rows


async def _now(function: Callable[[], T]) -> T:
    return function()


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # cancelled meanwhile: the result has nowhere to go
        future.set_result(result)


def _reject(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class _Worker:
    """The thread that owns one ``sqlite3`` connection and runs its calls in order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # Calls queued (counted by the callers' thread) and finished (by the worker): equal
        # when the worker is idle. A caller that was cancelled stops waiting for its call,
        # but the call still runs; until it has, the connection's state is not known.
        self.submitted = 0
        self.finished = 0
        self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, future, function = item
            try:
                result = function()
            except BaseException as error:  # handed to the caller, whatever it is
                answer: tuple[Callable[[asyncio.Future[Any], Any], None], Any] = (_reject, error)
            else:
                answer = (_resolve, result)
            self.finished += 1
            if loop is not None and future is not None:
                # RuntimeError: the loop is closed, nobody waits for the answer.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(answer[0], future, answer[1])

    async def call(self, function: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.submitted += 1
        self._queue.put((loop, future, function))
        return await future

    @property
    def idle(self) -> bool:
        return self.finished == self.submitted

    def call_nowait(self, function: Callable[[], Any]) -> None:
        """Queue a call whose outcome nobody waits for."""
        self.submitted += 1
        self._queue.put((None, None, function))

    def stop(self) -> None:
        """Let the thread finish what is queued, then end."""
        self._queue.put(None)


class Cursor:
    """A DBAPI cursor over a buffered result: ``execute`` is one hand-off to the worker."""

    server_side = False
    __slots__ = ("_connection", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._rows: collections.deque[Any] = collections.deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def execute(self, operation: str, parameters: Sequence[Any] | None = None) -> Any:
        if self._connection.defer_begin(operation, parameters):
            self.description, self.rowcount, self._rows = None, -1, collections.deque()
            return None
        head = operation.lstrip()[:8].upper()
        if head.startswith("PRAGMA"):
            self._connection.forget_settings()  # perhaps the busy timeout
        inline = not head.startswith(_WORKER_ONLY)
        self._take(self._connection.run(_statement(operation, parameters), inline=inline))
        return None

    def executemany(self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]) -> Any:
        inline = not operation.lstrip()[:8].upper().startswith(_WORKER_ONLY)
        work = _statement_many(operation, seq_of_parameters)
        self._take(self._connection.run(work, inline=inline))
        return None

    def _take(self, result: _Result) -> None:
        self.description, self.rowcount, self.lastrowid, rows = result
        self._rows = collections.deque(rows)

    def close(self) -> None:
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        """SQLAlchemy's asyncio results call this: the rows are buffered already, and the
        ``sqlite3`` cursor was closed on the worker thread, so there is nothing to release."""

    def setinputsizes(self, *sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        while self._rows:
            yield self._rows.popleft()

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = self._rows
        return [rows.popleft() for _ in range(min(size or self.arraysize, len(rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows


def _drain(cursor: sqlite3.Cursor) -> _Result:
    description = cursor.description
    rows = cursor.fetchall() if description is not None else []
    return description, cursor.rowcount, cursor.lastrowid, rows


def _statement(
    operation: str, parameters: Sequence[Any] | None
) -> Callable[[sqlite3.Cursor], _Result]:
    def run(cursor: sqlite3.Cursor) -> _Result:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        return _drain(cursor)

    return run


def _statement_many(
    operation: str, seq_of_parameters: Sequence[Sequence[Any]]
) -> Callable[[sqlite3.Cursor], _Result]:
    def run(cursor: sqlite3.Cursor) -> _Result:
        cursor.executemany(operation, seq_of_parameters)
        return _drain(cursor)

    return run


class Connection(AdaptedConnection):
    """The DBAPI connection SQLAlchemy sees. Its methods are called from SQLAlchemy's greenlet
    on the event loop thread and wait (``await_``) for the worker."""

    __slots__ = ("_begin", "_busy_ms", "_locked", "_sqlite", "_worker", "dbapi")

    def __init__(self, dbapi: DBAPI, worker: _Worker, connection: sqlite3.Connection) -> None:
        self.dbapi = dbapi
        self._worker = worker
        self._sqlite = connection
        # What SQLAlchemy hands out as ``driver_connection`` (typed there as an async driver's).
        self._connection = connection  # type: ignore[assignment]
        self._begin: str | None = None  # a BEGIN not sent yet: it goes with the next call
        self._locked = False  # in a transaction begun with BEGIN IMMEDIATE: holds the lock
        self._busy_ms: int | None = None  # the busy timeout, read when first needed

    # --- the hand-off ----------------------------------------------------------------------

    def run(self, work: Callable[[sqlite3.Cursor], T], *, inline: bool = False) -> T:
        """Run ``work`` with a fresh cursor, after any pending BEGIN: on the worker thread, or
        with ``inline`` here when this connection holds the write lock (see the module)."""
        connection, begin = self._sqlite, self._begin
        self._begin = None
        if begin is not None and inline and self._began_here(begin):
            begin, self._locked = None, True

        def call() -> T:
            if begin is not None:
                connection.execute(begin)
            cursor = connection.cursor()
            try:
                return work(cursor)
            finally:
                cursor.close()

        if inline and self._holds_lock():
            # Still through await_, as SQLAlchemy's asyncio layer checks that the driver
            # awaited; the coroutine completes at once, without an event-loop iteration.
            return await_(_now(call))
        result = await_(self._worker.call(call))
        if begin is not None and begin.strip().upper() in _WRITE_BEGINS:
            self._locked = True
        return result

    def forget_settings(self) -> None:
        self._busy_ms = None

    def _began_here(self, begin: str) -> bool:
        if begin.strip().upper() not in _WRITE_BEGINS or not self._worker.idle:
            return False
        return await_(_now(lambda: self._begin_now(begin)))

    def _begin_now(self, begin: str) -> bool:
        """Try ``begin`` (a BEGIN IMMEDIATE) here without waiting: True if it took the write
        lock; False if another connection holds it, to wait for it on the worker instead."""
        connection = self._sqlite
        timeout = self._busy_ms
        if timeout is None:
            (timeout,) = connection.execute("PRAGMA busy_timeout").fetchone()
            self._busy_ms = timeout
        connection.execute("PRAGMA busy_timeout = 0")
        try:
            connection.execute(begin)
        except sqlite3.OperationalError as error:
            if getattr(error, "sqlite_errorcode", 0) & 0xFF in _BUSY_CODES:
                return False
            raise
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(timeout)}")
        return True

    def _holds_lock(self) -> bool:
        if not self._locked:
            return False
        if self._worker.idle and self._sqlite.in_transaction:
            return True
        self._locked = False  # ended meanwhile (or unknown): back to the worker
        return False

    def _call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._sqlite
        return await_(self._worker.call(lambda: function(connection)))

    def defer_begin(self, operation: str, parameters: Sequence[Any] | None) -> bool:
        """Hold a bare BEGIN back until the transaction's first statement."""
        if parameters or operation.strip().upper() not in _BEGIN_STATEMENTS:
            return False
        if self._begin is not None or not self._no_transaction():
            return False  # let SQLite say what it says about a nested BEGIN
        self._begin = operation
        return True

    # --- DBAPI -----------------------------------------------------------------------------

    def cursor(self, server_side: bool = False) -> Cursor:
        if server_side:
            raise NotImplementedError("server-side cursors are not supported by this driver")
        return Cursor(self)

    def execute(self, operation: str, parameters: Sequence[Any] | None = None) -> Cursor:
        cursor = self.cursor()
        cursor.execute(operation, parameters)
        return cursor

    def _no_transaction(self) -> bool:
        """True when no transaction is open: known only while the worker is idle (a call of a
        cancelled caller may still be running, or queued, and open one)."""
        if not self._worker.idle:
            return False
        try:
            return not self._sqlite.in_transaction
        except sqlite3.Error:
            return False  # closed: let the call itself raise

    def commit(self) -> None:
        self._locked = False
        if self._begin is not None:
            self._begin = None  # BEGIN then COMMIT with nothing between: nothing to do
            return
        if not self._no_transaction():
            self._call(lambda connection: connection.commit())

    def rollback(self) -> None:
        self._locked = False
        if self._begin is not None:
            self._begin = None
            return
        if not self._no_transaction():
            self._call(lambda connection: connection.rollback())

    def close(self) -> None:
        self._begin, self._locked = None, False
        try:
            self._call(lambda connection: connection.close())
        finally:
            self._worker.stop()

    def terminate(self) -> None:
        """Close without waiting (a connection SQLAlchemy invalidated, or garbage collection):
        the worker closes it after whatever it is running now."""
        self._begin, self._locked = None, False
        self._worker.call_nowait(self._sqlite.close)
        self._worker.stop()

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._call(lambda connection: connection.create_function(*args, **kwargs))

    @property
    def isolation_level(self) -> str | None:
        level: str | None = self._sqlite.isolation_level
        return level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        def set_level(connection: sqlite3.Connection) -> None:
            connection.isolation_level = value

        self._call(set_level)


class DBAPI:
    """The DBAPI "module": ``sqlite3``'s names, with ``connect`` opening an async connection."""

    paramstyle = "qmark"

    def __init__(self) -> None:
        self.sqlite = sqlite3
        for name in (
            "DatabaseError",
            "DataError",
            "Error",
            "IntegrityError",
            "InterfaceError",
            "InternalError",
            "NotSupportedError",
            "OperationalError",
            "ProgrammingError",
            "Warning",
            "sqlite_version",
            "sqlite_version_info",
            "PARSE_COLNAMES",
            "PARSE_DECLTYPES",
            "Binary",
        ):
            setattr(self, name, getattr(sqlite3, name))

    def connect(self, *args: Any, **kwargs: Any) -> Connection:
        kwargs["check_same_thread"] = False  # used only on the worker (see Connection)
        kwargs["isolation_level"] = None  # transactions are the engine's: it sends BEGIN
        worker = _Worker()
        try:
            connection = await_(worker.call(lambda: sqlite3.connect(*args, **kwargs)))
        except BaseException:
            worker.stop()
            raise
        return Connection(self, worker, connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(sqlite3, name)


class SQLiteDialect_imagegen(SQLiteDialect_pysqlite):
    driver = DRIVER
    supports_statement_cache = True
    is_async = True
    has_terminate = True
    supports_server_side_cursors = False

    @classmethod
    def import_dbapi(cls) -> Any:
        return DBAPI()

    @classmethod
    def get_pool_class(cls, url: Any) -> type[pool.Pool]:
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool

    def get_driver_connection(self, connection: Any) -> Any:
        return connection._connection

    def do_terminate(self, dbapi_connection: Any) -> None:
        dbapi_connection.terminate()


dialect = SQLiteDialect_imagegen
