"""The schema: Alembic migrations agree with the ORM on SQLite and PostgreSQL, start-up
migration is idempotent and safe when processes race, and the mappers lose nothing."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

from imagegen.domain.generation import (
    GeneratedImage,
    Generation,
    GenerationParameters,
    GenerationStatus,
)
from imagegen.domain.models import Operation
from imagegen.domain.values import MAX_SEED, ImageFormat, ImageSize, Seed
from imagegen.infrastructure.persistence import engine as engine_module
from imagegen.infrastructure.persistence import mappers
from imagegen.infrastructure.persistence.engine import (
    HEAD_REVISION,
    create_engine,
    current_revision,
    upgrade_schema,
)
from imagegen.infrastructure.persistence.orm import Base, GenerationRecord, ImageRecord

MIGRATIONS = Path(engine_module.__file__).parent / "migrations"


def test_head_revision_is_alembics_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))

    heads = ScriptDirectory.from_config(config).get_heads()

    assert heads == [HEAD_REVISION]


def schema_of(connection: Connection) -> tuple[set[str], list[Any]]:
    """The tables in the database, and Alembic's autogenerate diff against the ORM."""
    tables = set(sa.inspect(connection).get_table_names())
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return tables, compare_metadata(context, Base.metadata)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Migrations need brand-new databases: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'imagegen.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_upgrading_an_empty_database_creates_exactly_the_orms_schema(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) is None

        assert await upgrade_schema(engine) is None  # the revision before: none

        assert await current_revision(engine) == HEAD_REVISION
        async with engine.connect() as connection:
            tables, diff = await connection.run_sync(schema_of)
    finally:
        await engine.dispose()
    assert tables == {*Base.metadata.tables, "alembic_version"}
    assert diff == []


async def test_upgrade_schema_is_idempotent_and_keeps_the_data(database_url: str) -> None:
    engine = create_engine(database_url)
    accounts = Base.metadata.tables["credit_accounts"]
    row = {
        "id": "acct_t1",
        "tenant_id": "t1",
        "balance": 5,
        "reserved": 0,
        "created_at": datetime(2025, 1, 1, tzinfo=UTC),
        "updated_at": datetime(2025, 1, 1, tzinfo=UTC),
    }
    try:
        assert await upgrade_schema(engine) is None
        async with engine.begin() as connection:
            await connection.execute(accounts.insert().values(**row))

        assert await upgrade_schema(engine) == HEAD_REVISION  # skipped: already at head
        assert await upgrade_schema(engine, force=True) == HEAD_REVISION  # Alembic: no-op

        assert await current_revision(engine) == HEAD_REVISION
        async with engine.connect() as connection:
            stored = (await connection.execute(sa.select(accounts))).mappings().all()
    finally:
        await engine.dispose()
    # Columns added later (0004_billing) read as their defaults.
    assert [dict(r) for r in stored] == [{**row, "plan_id": None, "has_budgets": False}]


# Each process imports everything, says it is ready, and waits for "go" on stdin, so that
# the four upgrades really start together (imports take longer than the migration).
RACER = textwrap.dedent(
    """
    import asyncio, sys
    from imagegen.infrastructure.persistence.engine import create_engine, upgrade_schema

    async def main() -> None:
        engine = create_engine(sys.argv[1])
        print("ready", flush=True)
        sys.stdin.readline()
        try:
            print(await upgrade_schema(engine), flush=True)
        finally:
            await engine.dispose()

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_processes_upgrading_a_brand_new_database_at_once_all_succeed(
    database_url: str,
) -> None:
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            database_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            ready = await asyncio.wait_for(racer.stdout.readline(), timeout=60)
            assert ready == b"ready\n", (await racer.communicate())[1].decode()
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write(b"go\n")
            await racer.stdin.drain()
        results = [await asyncio.wait_for(r.communicate(), timeout=60) for r in racers]
    finally:
        for racer in racers:
            if racer.returncode is None:
                racer.kill()
                await racer.wait()

    codes = [r.returncode for r in racers]
    assert codes == [0, 0, 0, 0], [err.decode()[-2000:] for _, err in results]
    # Every racer saw an empty database or one another racer had just migrated.
    assert {out.decode().split()[-1] for out, _ in results} <= {"None", HEAD_REVISION}
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) == HEAD_REVISION
        async with engine.connect() as connection:
            tables, diff = await connection.run_sync(schema_of)
    finally:
        await engine.dispose()
    assert tables == {*Base.metadata.tables, "alembic_version"}
    assert diff == []


# --- mappers -----------------------------------------------------------------------------------

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=64)
texts = st.text(max_size=200)
optional_texts = st.none() | texts
offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.builds(
    lambda naive, tz: naive.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    offsets,
)
seeds = st.none() | st.integers(min_value=0, max_value=MAX_SEED).map(Seed)
sizes = st.builds(ImageSize, st.integers(1, 16384), st.integers(1, 16384))


@st.composite
def generations(draw: st.DrawFn) -> Generation:
    generation_id = draw(ids)
    indexes = draw(st.lists(st.integers(0, 9), unique=True, max_size=4))
    images = [
        GeneratedImage(
            id=f"{generation_id}_img{index}",
            generation_id=generation_id,
            index=index,
            storage_key=draw(texts),
            sha256=draw(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
            format=draw(st.sampled_from(ImageFormat)),
            width=draw(st.integers(1, 16384)),
            height=draw(st.integers(1, 16384)),
            byte_size=draw(st.integers(0, 2**40)),
            seed=draw(seeds),
            created_at=draw(aware_datetimes),
        )
        for index in indexes
    ]
    return Generation(
        id=generation_id,
        tenant_id=draw(ids),
        principal_id=draw(ids),
        provider=draw(ids),
        model=draw(ids),
        prompt=draw(texts),
        parameters=GenerationParameters(
            n=draw(st.integers(1, 10)),
            size=draw(sizes),
            format=draw(st.sampled_from(ImageFormat)),
            seed=draw(seeds),
            negative_prompt=draw(optional_texts),
            operation=draw(st.sampled_from(Operation)),
        ),
        created_at=draw(aware_datetimes),
        updated_at=draw(aware_datetimes),
        status=draw(st.sampled_from(GenerationStatus)),
        estimated_credits=draw(st.integers(0, 2**40)),
        credits_charged=draw(st.integers(0, 2**40)),
        provider_cost_usd=draw(st.none() | st.decimals(0, 1000, places=4).map(str)),
        reservation_id=draw(st.none() | ids),
        idempotency_key=draw(optional_texts),
        request_fingerprint=draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64)),
        provider_job_id=draw(optional_texts),
        parent_id=draw(st.none() | ids),
        warnings=tuple(draw(st.lists(texts, max_size=3))),
        tags=tuple(draw(st.lists(texts, max_size=3))),
        failure_code=draw(optional_texts),
        failure_message=draw(optional_texts),
        images=draw(st.permutations(images)),
    )


def columns(record: Any) -> dict[str, Any]:
    return {c.key: getattr(record, c.key) for c in sa.inspect(type(record)).column_attrs}


def persisted(generation: Generation) -> dict[str, Any]:
    return attrs.asdict(generation, filter=lambda a, _: a.name != "events")


@given(generations())
def test_mappers_round_trip_a_generation_with_any_optional_fields(generation: Generation) -> None:
    record = GenerationRecord()
    mappers.generation_to_record(generation, record)
    images = [mappers.image_to_record(image) for image in generation.images]

    back = mappers.generation_to_domain(record, images)

    expected = persisted(generation)
    expected["images"].sort(key=lambda image: image["index"])
    assert persisted(back) == expected
    # ...and record → domain → record gives the same columns.
    again = GenerationRecord()
    mappers.generation_to_record(back, again)
    assert columns(again) == columns(record)
    assert sorted(
        (columns(mappers.image_to_record(image)) for image in back.images),
        key=lambda c: c["index"],
    ) == sorted((columns(image) for image in images), key=lambda c: c["index"])
    assert all(isinstance(image, ImageRecord) for image in images)
