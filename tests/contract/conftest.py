"""The persistence contract's backends (memory, SQLite, PostgreSQL), for every contract module."""

from contract.test_persistence_contract import (  # noqa: F401
    backend,
    postgres_database,
    sqlite_database,
)
