"""Migration 0004_billing on a database with history: every capture made before billing
existed gets its usage event, so ``billing verify`` holds right after the upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from imagegen.application.ports import UsageQuery
from imagegen.application.use_cases.billing import VerifyBilling
from imagegen.infrastructure.persistence import engine as engine_module
from imagegen.infrastructure.persistence.engine import create_engine, upgrade_schema
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.infrastructure.system import UlidGenerator

T = "2026-10-31 23:59:00"
ROWS = [
    "INSERT INTO credit_accounts VALUES ('acct_t1', 't1', 95, 0, :t, :t)",
    "INSERT INTO ledger_entries (id, account_id, kind, amount, balance_after, reservation_id,"
    " reference, memo, created_at) VALUES ('ent_g', 'acct_t1', 'grant', 100, 100, NULL, NULL,"
    " NULL, :t), ('ent_c', 'acct_t1', 'capture', -5, 95, 'res_1', 'gen_1', NULL, :t)",
    "INSERT INTO credit_reservations (id, account_id, amount, status, captured_amount, reference,"
    " created_at, expires_at, resolved_at) VALUES ('res_1', 'acct_t1', 6, 'captured', 5,"
    " 'gen_1', :t, :t, :t), ('res_2', 'acct_t1', 3, 'released', 0, 'gen_2', :t, :t, :t)",
    "INSERT INTO generations (id, tenant_id, principal_id, provider, model, operation, prompt,"
    " n, width, height, format, status, estimated_credits, credits_charged, provider_cost_usd,"
    " reservation_id, warnings, tags, created_at, updated_at) VALUES"
    " ('gen_1', 't1', 'ann', 'local', 'procedural', 'generate', 'p', 2, 64, 64, 'png',"
    " 'succeeded', 6, 5, '0.02', 'res_1', '[]', '[]', :t, :t),"
    " ('gen_2', 't1', 'ann', 'local', 'procedural', 'generate', 'p', 1, 64, 64, 'png',"
    " 'failed', 3, 0, NULL, 'res_2', '[]', '[]', :t, :t)",
    'INSERT INTO images (id, generation_id, "index", storage_key, sha256, format, width,'
    " height, byte_size, seed, created_at) VALUES"
    " ('img_1', 'gen_1', 0, 'k1', 'h1', 'png', 64, 64, 10, NULL, :t),"
    " ('img_2', 'gen_1', 1, 'k2', 'h2', 'png', 64, 64, 10, NULL, :t)",
]


@pytest.fixture(params=["sqlite_url", pytest.param("postgres_url", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A brand-new database (conftest's), on each backend."""
    url: str = request.getfixturevalue(request.param)
    return url


def at_0003_with_history(url: str) -> None:
    sync = sa.create_engine(url)  # the synchronous driver of the same database
    config = Config()
    config.set_main_option(
        "script_location", str(Path(engine_module.__file__).parent / "migrations")
    )
    with sync.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003_provider_job_ids")
        for statement in ROWS:
            connection.execute(sa.text(statement), {"t": T})
    sync.dispose()


async def test_upgrading_gives_every_earlier_capture_its_usage_event(database_url: str) -> None:
    at_0003_with_history(database_url)
    engine = create_engine(database_url)
    try:
        assert await upgrade_schema(engine) == "0003_provider_job_ids"
        uow = SqlUnitOfWorkFactory(engine, UlidGenerator())
        async with uow(read_only=True) as unit:
            events = await unit.usage.list(UsageQuery("t1"))
        check = await VerifyBilling(uow=uow).execute()
    finally:
        await engine.dispose()
    (event,) = events
    assert (event.id, event.credits, event.images, event.ledger_entry_id) == (
        "use_res_1",
        5,
        2,
        "ent_c",
    )
    assert (event.principal_id, str(event.provider_cost_usd)) == ("ann", "0.02")
    assert event.period_start.isoformat() == "2026-10-01T00:00:00+00:00"
    assert check.violations == ()
