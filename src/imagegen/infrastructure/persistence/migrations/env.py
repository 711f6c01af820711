"""Alembic environment. Migrations run on a connection the caller passes in
(``engine.upgrade_schema``), or on ``IMAGEGEN_DATABASE_URL`` from the alembic CLI."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from imagegen.infrastructure.persistence.orm import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from imagegen.bootstrap.settings import Settings

    url = Settings().sync_database_url()
    engine = create_engine(url)
    with engine.connect() as connection:
        _run(connection)
        connection.commit()


main()
