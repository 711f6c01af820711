"""Database engines: URL normalisation, SQLite locking, and schema migration on start-up."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.dialects import registry
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from imagegen.domain.errors import ConfigurationError

# The newest migration; a test checks it against Alembic's head. Comparing it with the
# database's version lets start-up skip importing Alembic when the schema is current.
HEAD_REVISION = "0009_job_inputs"
READ_ONLY = "imagegen_read_only"
SQLITE_DRIVER = "imagegen_sqlite"
_MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"imagegen-migrations").digest()[:7], "big")


# By name only: the module is imported when an engine for such a URL is created.
registry.register(
    f"sqlite.{SQLITE_DRIVER}",
    "imagegen.infrastructure.persistence.sqlite_driver",
    "SQLiteDialect_imagegen",
)


def normalize_url(url: str) -> str:
    """Pick the async driver we support for each backend (psycopg 3; for SQLite our own
    adapter over the standard ``sqlite3`` module, see ``sqlite_driver``)."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigurationError(
            "The database URL is not valid (expected sqlite:///path or "
            "postgresql+psycopg://user@host/db)."
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername=f"sqlite+{SQLITE_DRIVER}").render_as_string(
            hide_password=False
        )
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ConfigurationError(
        f"Database backend {backend!r} is not supported; use SQLite or PostgreSQL."
    )


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<invalid database URL>"


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Writing transactions start with BEGIN IMMEDIATE: they take SQLite's write lock up
    front, so a read-then-write (check balance, reserve) can never interleave with another
    process's. Read-only transactions stay deferred and run alongside writers (WAL)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()
        # SQLite's lower() folds ASCII only; searches must ignore case in every language
        # (as they do on PostgreSQL), so replace it with Python's.
        dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(url, echo=echo, pool_size=10)
    _ping_when_idle(engine)
    return engine


# A connection idle longer than this is pinged before use (one round trip). A busy pool reuses
# its connections within milliseconds and so pays nothing per transaction; SQLAlchemy's
# ``pool_pre_ping`` would add a round trip to every one. A connection that dies while in use
# still fails that use: SQLAlchemy then invalidates the pool and the next use reconnects.
IDLE_PING_SECONDS = 2.0
_IDLE_SINCE = "imagegen_idle_since"


def _ping_when_idle(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception:
            alive = False
        if not alive:
            # The pool discards this connection and checks out (or opens) another one.
            raise DisconnectionError("the pooled connection did not answer a ping")


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        try:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return result.scalar_one_or_none()
        except Exception:
            return None
        finally:
            await connection.rollback()


async def upgrade_schema(engine: AsyncEngine, *, force: bool = False) -> str | None:
    """Apply pending migrations. Safe when several processes start at once: on SQLite the
    migration runs inside BEGIN IMMEDIATE, on PostgreSQL under an advisory lock, and both
    re-check the version once they hold the lock. Returns the revision before upgrading."""
    attempts = 5 if engine.dialect.name == "sqlite" else 1
    try:
        for attempt in range(attempts):
            try:
                before = await current_revision(engine)
                if before == HEAD_REVISION and not force:
                    return before
                async with engine.begin() as connection:
                    if engine.dialect.name == "postgresql":
                        await connection.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                        )
                    await connection.run_sync(_run_alembic_upgrade)
                break
            except OperationalError as error:
                # Several processes creating a brand-new SQLite file at once can see "database
                # is locked" (switching it to WAL needs the file to themselves): try again.
                if "locked" not in str(error.orig) or attempt + 1 == attempts:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
    except (OperationalError, InterfaceError) as error:
        # The driver's message may name the host and user; never the password, but we keep
        # only the masked URL and the kind of failure to be safe.
        where = safe_url(engine.url.render_as_string(hide_password=False))
        raise ConfigurationError(
            f"Cannot use the database at {where} ({type(error.orig).__name__}); "
            "check IMAGEGEN_DATABASE_URL and that the server is running.",
            database=where,
        ) from None
    return before


def _run_alembic_upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
