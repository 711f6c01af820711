"""Shared fixtures: databases (SQLite always; PostgreSQL when reachable), settings, clients.

PostgreSQL tests use ``IMAGEGEN_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). When the server cannot be reached
they are skipped with the reason — unless ``IMAGEGEN_REQUIRE_POSTGRES=1`` (set by CI), where a
missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from imagegen.bootstrap.settings import Settings

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("IMAGEGEN_TEST_POSTGRES_URL", DEFAULT_PG)
REQUIRE_PG = os.environ.get("IMAGEGEN_REQUIRE_POSTGRES") == "1"

_pg_problem: str | None = None
_pg_checked = False


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None when it can). Checked once per session."""
    global _pg_checked, _pg_problem
    if not _pg_checked:
        _pg_checked = True
        try:
            import psycopg

            dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn, connect_timeout=3) as connection:
                connection.execute("SELECT 1")
        except Exception as error:
            _pg_problem = f"PostgreSQL at {PG_URL} is not reachable ({type(error).__name__})"
    return _pg_problem


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is not None:
        if REQUIRE_PG:
            pytest.fail(f"{problem}, and IMAGEGEN_REQUIRE_POSTGRES=1 requires it")
        pytest.skip(f"{problem}; set IMAGEGEN_TEST_POSTGRES_URL to run the PostgreSQL tests")


def _admin_dsn() -> str:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for one test, dropped afterwards."""
    require_postgres()
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"imagegen_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'imagegen.db'}"


@pytest.fixture(scope="module")
def shared_postgres_url() -> Iterator[str]:
    """One PostgreSQL database for a test module, dropped afterwards (creating and migrating
    one per test costs ~0.6 s; ``empty_postgres`` gives each test a blank one instead)."""
    require_postgres()
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"imagegen_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_postgres(url: str) -> None:
    """Delete every row but the schema version, so the next test starts from a blank database.
    (DELETE, not TRUNCATE: on these tiny tables it is ten times faster.)"""
    import psycopg

    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as connection:
        connection.execute("SET lock_timeout = '10s'")
        remaining = [
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
        ]
        for _ in range(len(remaining) + 1):  # referencing tables first, whatever their order
            blocked = []
            for table in remaining:
                try:
                    connection.execute(f'DELETE FROM "{table}"')
                except psycopg.errors.ForeignKeyViolation:
                    blocked.append(table)
            if not blocked:
                return
            remaining = blocked
        raise AssertionError(f"could not empty {remaining}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on a new SQLite file, and on a blank PostgreSQL
    database (the module's, emptied). ``postgres_url`` gives a brand-new one instead."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'imagegen.db'}"
    url: str = request.getfixturevalue("shared_postgres_url")
    empty_postgres(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,  # type: ignore[arg-type]
        starting_credits=100,
    )


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", starting_credits=100)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[object]:
    from imagegen import AsyncImageGen

    async with AsyncImageGen(settings) as gen:
        yield gen


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the real ``imagegen`` command against a fresh data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env["IMAGEGEN_DATA_DIR"] = str(tmp_path / "cli-data")
    env["COLUMNS"] = "200"
    return env
