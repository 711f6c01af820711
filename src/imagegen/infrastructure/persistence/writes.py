"""Deferred writes: the rows a unit of work inserts and updates by primary key, sent together.

A generation writes about a dozen rows in two transactions. Sent one statement at a time, each
costs a round trip and SQLAlchemy's per-statement machinery, which together cost more than the
database's own work. So the repositories *defer* these writes to the session
(``BufferedSession.defer_insert`` / ``defer_update``) and the session sends them, in call order:

- before anything else touches the database through it (a query, ``flush``, ``connection``,
  ``commit``), so a read in the same transaction always sees the transaction's own writes;
- on PostgreSQL, in one psycopg *pipeline* (one round trip for all of them) with SQL compiled
  once per statement shape — SQLAlchemy still defines the statements, types and bind
  processing, it just does not run its execution path once per row;
- elsewhere (SQLite), through ``AsyncSession.execute`` as before.

Objects added to the ORM session keep their order relative to deferred writes: an ``add``
made while writes are pending is itself deferred to its place in the queue.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound
from sqlalchemy.ext.asyncio import AsyncSession

_Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Shape:
    """One statement shape: INSERT of these columns, or UPDATE … SET these WHERE pk = :pk."""

    table: Table
    keys: tuple[str, ...]
    is_update: bool

    @property
    def core(self) -> Any:
        return _core(self)

    def parameters(self, values: Mapping[str, Any], pk: Any = None) -> _Row:
        row = {f"v_{k}": values[k] for k in self.keys}
        if self.is_update:
            row["pk"] = pk
        return row


@functools.lru_cache(maxsize=256)
def _core(shape: _Shape) -> Any:
    """The Core statement (built once per shape: building one costs more than running it)."""
    table = shape.table
    values = {table.c[k]: bindparam(f"v_{k}", type_=table.c[k].type) for k in shape.keys}
    if not shape.is_update:
        return insert(table).values(values)
    (pk,) = table.primary_key.columns
    return update(table).where(pk == bindparam("pk", type_=pk.type)).values(values)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A shape compiled for one dialect: the SQL text and each parameter's bind processor."""

    sql: str
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]

    def bind(self, row: _Row) -> _Row:
        for name, process in self.processors:
            row[name] = process(row[name])
        return row


@functools.lru_cache(maxsize=256)
def _compiled(shape: _Shape, dialect: Dialect) -> _Compiled:
    compiled = shape.core.compile(dialect=dialect)
    processors: list[tuple[str, Callable[[Any], Any]]] = []
    columns = {f"v_{k}": shape.table.c[k] for k in shape.keys}
    if shape.is_update:
        (pk,) = shape.table.primary_key.columns
        columns["pk"] = pk
    for name, column in columns.items():
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((name, process))
    return _Compiled(compiled.string, tuple(processors))


@dataclass(frozen=True, slots=True)
class _CompiledSelect:
    sql: str
    params: _Compiled
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    def bind(self, row: _Row) -> _Row:
        return self.params.bind(row)

    def row(self, values: Sequence[Any]) -> SimpleNamespace:
        return SimpleNamespace(
            **{
                name: process(value) if process is not None and value is not None else value
                for (name, process), value in zip(self.columns, values, strict=True)
            }
        )


@functools.lru_cache(maxsize=64)
def _compiled_select(statement: Any, dialect: Dialect) -> _CompiledSelect:
    compiled = statement.compile(dialect=dialect)
    processors: list[tuple[str, Callable[[Any], Any]]] = []
    for name, bind in compiled.binds.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((name, process))
    columns = tuple(
        (column.key, column.type.dialect_impl(dialect).result_processor(dialect, None))
        for column in statement.selected_columns
    )
    return _CompiledSelect(compiled.string, _Compiled(compiled.string, tuple(processors)), columns)


def _insert_keys(table: Table, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The columns an INSERT of ``values`` writes: those given, plus those with a Python-side
    scalar default (SQLAlchemy would fill them in; the compiled statement must too)."""
    keys = []
    for column in table.columns:
        if column.key in values:
            keys.append(column.key)
        elif column.default is not None:
            if not column.default.is_scalar:
                raise NotImplementedError(f"{table.name}.{column.key}: a non-scalar default")
            keys.append(column.key)
    return tuple(keys)


@dataclass(slots=True)
class _Write:
    shape: _Shape
    rows: list[_Row]
    expect_rows: int | None = None  # an UPDATE by primary key must find its row
    what: str = ""


@dataclass(slots=True)
class _Add:
    instance: object


@dataclass(slots=True)
class _Queue:
    entries: list[_Write | _Add] = field(default_factory=list)


class BufferedSession(AsyncSession):
    """An ``AsyncSession`` that holds deferred writes until the database is next used."""

    def _pending(self) -> _Queue:
        queue: _Queue | None = self.info.get("imagegen_writes")
        if queue is None:
            queue = self.info["imagegen_writes"] = _Queue()
        return queue

    # --- deferring --------------------------------------------------------------------------

    def defer_insert(self, table: Table, rows: Iterable[Mapping[str, Any]]) -> None:
        """INSERT ``rows`` (column key → value; the columns left out get their defaults)."""
        entries = self._pending().entries
        for values in rows:
            shape = _Shape(table, _insert_keys(table, values), is_update=False)
            row = shape.parameters(_with_defaults(table, shape.keys, values))
            last = entries[-1] if entries else None
            if isinstance(last, _Write) and last.shape == shape:
                last.rows.append(row)  # the same shape again: one executemany
            else:
                entries.append(_Write(shape, [row]))

    def defer_update(
        self, table: Table, pk: Any, values: Mapping[str, Any], *, what: str = ""
    ) -> None:
        """UPDATE ``table`` SET ``values`` WHERE its primary key = ``pk``; the row must exist
        (``LookupError`` when the writes are sent, naming ``what``)."""
        shape = _Shape(table, tuple(c.key for c in table.columns if c.key in values), True)
        self._pending().entries.append(
            _Write(shape, [shape.parameters(values, pk)], expect_rows=1, what=what)
        )

    def add(self, instance: object, _warn: bool = True) -> None:
        queue: _Queue | None = self.info.get("imagegen_writes")
        if queue is not None and queue.entries:
            queue.entries.append(_Add(instance))  # after the writes deferred before it
        else:
            super().add(instance, _warn=_warn)

    def add_all(self, instances: Iterable[object]) -> None:
        for instance in instances:
            self.add(instance)

    # --- sending ----------------------------------------------------------------------------

    async def send_writes(self) -> None:
        """Send the deferred writes now, in order (a no-op when there are none).

        (COMMIT cannot ride in the same pipeline: an UPDATE that found no row is only known
        from its row count, once the results are in, and then the transaction must still be
        open to be rolled back.)"""
        queue: _Queue | None = self.info.get("imagegen_writes")
        entries: list[_Write | _Add] = []
        if queue is not None and queue.entries:
            entries, queue.entries = queue.entries, []
        batch: list[_Write] = []
        for entry in entries:
            if isinstance(entry, _Write):
                batch.append(entry)
                continue
            await self._send(batch)
            batch = []
            super().add(entry.instance)
            await super().flush()  # in its place: before the writes deferred after it
        await self._send(batch)

    async def _send(self, batch: Sequence[_Write]) -> None:
        if not batch:
            return
        if self.sync_session.new or self.sync_session.dirty or self.sync_session.deleted:
            await super().flush()  # what the ORM holds was added before these writes
        dialect = self._psycopg_dialect()
        if dialect is not None:
            await self._send_pipelined(batch, dialect)
            return
        for write in batch:
            result = await super().execute(
                write.shape.core, write.rows if len(write.rows) > 1 else write.rows[0]
            )
            _check(write, getattr(result, "rowcount", None))

    def _psycopg_dialect(self) -> Dialect | None:
        dialect = self.bind.dialect if self.bind is not None else None
        if dialect is not None and (dialect.name, dialect.driver) == ("postgresql", "psycopg"):
            return dialect
        return None

    async def _driver(self) -> Any:
        """The psycopg connection of this session's transaction (begun if need be)."""
        connection = await super().connection()
        raw = await connection.get_raw_connection()
        return raw.driver_connection

    async def _send_pipelined(self, batch: Sequence[_Write], dialect: Dialect) -> None:
        import psycopg

        driver = await self._driver()
        cursors = []
        sql = ""
        try:
            async with driver.pipeline():
                for write in batch:
                    compiled = _compiled(write.shape, dialect)
                    sql = compiled.sql
                    rows = [compiled.bind(dict(row)) for row in write.rows]
                    cursor = driver.cursor()
                    if len(rows) > 1:
                        await cursor.executemany(sql, rows)
                    else:
                        await cursor.execute(sql, rows[0])
                    cursors.append((write, cursor))
        except psycopg.Error as error:
            raise DBAPIError.instance(sql, None, error, psycopg.Error) from error
        for write, cursor in cursors:
            _check(write, cursor.rowcount)

    async def one_or_none(self, statement: Any, parameters: Mapping[str, Any]) -> Any:
        """The row a Core SELECT finds (its columns as attributes), or None; more than one is
        an error. On PostgreSQL it runs on the psycopg connection directly, compiled once per
        statement object: pass statements built once (module-level, cached)."""
        dialect = self._psycopg_dialect()
        if dialect is None:
            return (await self.execute(statement, parameters)).one_or_none()
        import psycopg

        await self.send_writes()
        query = _compiled_select(statement, dialect)
        driver = await self._driver()
        cursor = driver.cursor()
        try:
            await cursor.execute(query.sql, query.bind(dict(parameters)))
            rows = await cursor.fetchall()
        except psycopg.Error as error:
            raise DBAPIError.instance(query.sql, None, error, psycopg.Error) from error
        if len(rows) > 1:
            raise MultipleResultsFound("one_or_none() found more than one row")
        return query.row(rows[0]) if rows else None

    # --- everything that uses the database sends the writes first ------------------------

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().execute(*args, **kwargs)

    async def scalar(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().scalar(*args, **kwargs)

    async def scalars(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().scalars(*args, **kwargs)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().get(*args, **kwargs)

    async def stream(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().stream(*args, **kwargs)

    async def stream_scalars(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().stream_scalars(*args, **kwargs)

    async def get_one(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().get_one(*args, **kwargs)

    async def merge(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().merge(*args, **kwargs)

    async def refresh(self, *args: Any, **kwargs: Any) -> None:
        await self.send_writes()
        await super().refresh(*args, **kwargs)

    async def delete(self, instance: object) -> None:
        await self.send_writes()
        await super().delete(instance)

    async def run_sync(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().run_sync(*args, **kwargs)

    async def flush(self, objects: Sequence[Any] | None = None) -> None:
        await self.send_writes()
        await super().flush(objects)

    async def connection(self, *args: Any, **kwargs: Any) -> Any:
        await self.send_writes()
        return await super().connection(*args, **kwargs)

    async def commit(self) -> None:
        await self.send_writes()
        await super().commit()

    async def rollback(self) -> None:
        self._discard_writes()
        await super().rollback()

    async def close(self) -> None:
        self._discard_writes()
        await super().close()

    def _discard_writes(self) -> None:
        queue: _Queue | None = self.info.get("imagegen_writes")
        if queue is not None:
            queue.entries.clear()


def _with_defaults(table: Table, keys: tuple[str, ...], values: Mapping[str, Any]) -> _Row:
    row = dict(values)
    for key in keys:
        if key not in row:
            default = table.c[key].default
            row[key] = default.arg if default is not None else None  # type: ignore[attr-defined]
    return row


def _check(write: _Write, rowcount: int | None) -> None:
    if (
        write.expect_rows is not None
        and rowcount is not None
        and rowcount >= 0
        and rowcount != write.expect_rows * len(write.rows)
    ):
        raise LookupError(f"{write.what or write.shape.table.name} is not stored")
