"""One contract for the persistence ports, run against every implementation.

``GenerationRepository``, ``AssetRepository``, ``AccountRepository`` and ``UnitOfWork`` behave
the same in the in-memory fake (``imagegen.testing``), on SQLite and on PostgreSQL: whatever a
use case relies on is pinned here, so a test written against the fake means the same thing
against a real database.

The SQL databases are created and migrated once per module (``upgrade_schema``) and emptied
before every test; each test still builds its own engine and unit-of-work factory.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import PG_URL, require_postgres
from imagegen.application.ports import AssetQuery, HistoryQuery, Page, UnitOfWorkFactory
from imagegen.domain.asset import (
    DIGITAL_SOURCE_TYPE_GENERATED,
    ApprovalState,
    Asset,
    Provenance,
)
from imagegen.domain.billing import CreditAccount, EntryKind, LedgerEntry, ReservationStatus
from imagegen.domain.errors import InvalidParameter
from imagegen.domain.generation import (
    GeneratedImage,
    Generation,
    GenerationParameters,
    GenerationStatus,
)
from imagegen.domain.models import Operation
from imagegen.domain.values import Credits, ImageFormat, ImageSize, Seed
from imagegen.infrastructure.persistence.engine import READ_ONLY, create_engine, upgrade_schema
from imagegen.infrastructure.persistence.orm import Base
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.testing import InMemoryUnitOfWorkFactory, SequentialIds

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1))

OutboxRow = tuple[str, str, dict[str, Any], datetime]


@dataclass(frozen=True)
class Backend:
    name: str
    uow: UnitOfWorkFactory
    outbox: Callable[[], Awaitable[list[OutboxRow]]]


# --- the three implementations -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('contract') / 'imagegen.db'}"


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """One brand-new PostgreSQL database for this module (like conftest's ``postgres_url``,
    which is per test: a database per test would add some ten seconds to this module)."""
    require_postgres()
    import psycopg

    name = f"imagegen_contract_{uuid.uuid4().hex[:12]}"
    admin_dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def empty_every_table(engine: AsyncEngine) -> None:
    # DELETE, not TRUNCATE: on a few rows it is ten times faster on PostgreSQL.
    async with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(table.delete())


def sql_outbox(engine: AsyncEngine) -> Callable[[], Awaitable[list[OutboxRow]]]:
    outbox = Base.metadata.tables["outbox"]

    # A read-only connection: on SQLite it does not wait for a writer's lock.
    reader = engine.execution_options(**{READ_ONLY: True})

    async def read() -> list[OutboxRow]:
        statement = select(
            outbox.c.name, outbox.c.aggregate_id, outbox.c.data, outbox.c.occurred_at
        ).order_by(outbox.c.id)
        async with reader.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [(r.name, r.aggregate_id, r.data, r.occurred_at) for r in rows]

    return read


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        fake = InMemoryUnitOfWorkFactory()

        async def memory_outbox() -> list[OutboxRow]:
            return [(e.name, e.aggregate_id, e.data, e.occurred_at) for e in fake.outbox]

        yield Backend("memory", fake, memory_outbox)
        return
    url: str = request.getfixturevalue(f"{request.param}_database")
    engine = create_engine(url)
    try:
        await upgrade_schema(engine)  # migrates on the module's first test, then a no-op
        await empty_every_table(engine)
        yield Backend(
            request.param, SqlUnitOfWorkFactory(engine, SequentialIds()), sql_outbox(engine)
        )
    finally:
        await engine.dispose()


# --- builders ----------------------------------------------------------------------------------


def image(
    generation_id: str, index: int, *, created_at: datetime = T0, seed: int | None = 7
) -> GeneratedImage:
    digest = f"{index:02x}" * 32
    return GeneratedImage(
        id=f"img_{generation_id}_{index}",
        generation_id=generation_id,
        index=index,
        storage_key=f"{digest[:2]}/{digest}.png",
        sha256=digest,
        format=ImageFormat.PNG,
        width=64,
        height=32,
        byte_size=1000 + index,
        seed=Seed(seed) if seed is not None else None,
        created_at=created_at,
    )


def generation(
    generation_id: str,
    *,
    tenant_id: str = "t1",
    created_at: datetime = T0,
    prompt: str = "a red fox in the snow",
    provider: str = "local",
    model: str = "procedural",
    status: GenerationStatus = GenerationStatus.QUEUED,
    images: int = 0,
    **fields: Any,
) -> Generation:
    return Generation(
        id=generation_id,
        tenant_id=tenant_id,
        principal_id="alice",
        provider=provider,
        model=model,
        prompt=prompt,
        parameters=GenerationParameters(
            n=max(images, 1), size=ImageSize(64, 32), format=ImageFormat.PNG, seed=None
        ),
        created_at=created_at,
        updated_at=created_at,
        status=status,
        images=[image(generation_id, i, created_at=created_at) for i in range(images)],
        **fields,
    )


def fully_populated_generation() -> Generation:
    created = datetime(2025, 3, 1, 13, 0, 0, 123456, tzinfo=CET)  # stored as UTC
    return Generation(
        id="gen_full",
        tenant_id="t1",
        principal_id="alice",
        provider="local",
        model="procedural",
        prompt='a red fox, 100% "fluffy" — ünïcode ✓',
        parameters=GenerationParameters(
            n=2,
            size=ImageSize(1536, 1024),
            format=ImageFormat.WEBP,
            seed=Seed(2**32 - 1),
            negative_prompt="blurry, low quality",
            operation=Operation.EDIT,
        ),
        created_at=created,
        updated_at=created + timedelta(seconds=5),
        status=GenerationStatus.FAILED,
        estimated_credits=8,
        credits_charged=3,
        provider_cost_usd="0.0400",
        reservation_id="res_full",
        idempotency_key="key-1",
        request_fingerprint="f" * 64,
        provider_job_id="job-42",
        parent_id="gen_parent",
        warnings=("Size 1500x1000 is not supported; using 1536x1024.", "seed ignored"),
        tags=("fox", "winter"),
        failure_code="provider_unavailable",
        failure_message="The provider is down.",
        images=[
            image("gen_full", 1, created_at=created, seed=None),
            image("gen_full", 0, created_at=created),
        ],
    )


def asset(
    asset_id: str,
    of: GeneratedImage,
    *,
    tenant_id: str = "t1",
    created_at: datetime = T0,
    title: str = "A red fox",
    tags: tuple[str, ...] = ("fox",),
) -> Asset:
    return Asset(
        id=asset_id,
        tenant_id=tenant_id,
        image_id=of.id,
        generation_id=of.generation_id,
        storage_key=of.storage_key,
        sha256=of.sha256,
        format=of.format,
        width=of.width,
        height=of.height,
        byte_size=of.byte_size,
        title=title,
        tags=tags,
        provenance=Provenance(
            digital_source_type=DIGITAL_SOURCE_TYPE_GENERATED,
            provider="local",
            model="procedural",
            prompt="a red fox",
            generation_id=of.generation_id,
            seed=7,
            negative_prompt="blurry",
            created_at=created_at,
            parent_asset_id="ast_parent",
        ),
        created_at=created_at,
        updated_at=created_at,
        approval_state=ApprovalState.IN_REVIEW,
        metadata={"client": "acme", "campaign": "winter"},
        version=3,
    )


def account(
    account_id: str = "acct_t1", *, tenant_id: str = "t1", balance: int = 0
) -> CreditAccount:
    return CreditAccount(
        account_id, tenant_id, balance=balance, reserved=0, created_at=T0, updated_at=T0
    )


def fields(entity: Any) -> dict[str, Any]:
    """Every persisted field, recursively (domain entities compare by identity)."""
    return attrs.asdict(entity, filter=lambda a, _: a.name not in {"events", "new_entries"})


async def store(backend: Backend, *generations: Generation) -> None:
    async with backend.uow() as uow:
        for g in generations:
            await uow.generations.add(g)
        await uow.commit()


async def history(backend: Backend, **query: Any) -> Page[Generation]:
    async with backend.uow(read_only=True) as uow:
        return await uow.generations.list(
            HistoryQuery(tenant_id=query.pop("tenant_id", "t1"), **query)
        )


async def ids_of(backend: Backend, **query: Any) -> list[str]:
    return [g.id for g in (await history(backend, limit=100, **query)).items]


async def open_account(backend: Backend, balance: int = 100) -> None:
    async with backend.uow() as uow:
        acct = account()
        assert await uow.accounts.create_if_missing(acct)
        if balance:
            acct.grant("ent_grant", Credits(balance), T0)
            await uow.accounts.save(acct)
        await uow.commit()


# --- generations -------------------------------------------------------------------------------


async def test_a_generation_with_images_survives_a_round_trip_with_every_field(
    backend: Backend,
) -> None:
    original = fully_populated_generation()
    await store(backend, original)

    async with backend.uow(read_only=True) as uow:
        loaded = await uow.generations.get("t1", "gen_full")

    assert loaded is not None
    expected = fields(original)
    expected["images"].sort(key=lambda i: i["index"])  # added as 1, 0: loaded by index
    assert fields(loaded) == expected
    assert loaded.created_at.utcoffset() == timedelta(0)
    assert all(i.created_at.tzinfo is not None for i in loaded.images)


async def test_a_generation_with_only_required_fields_survives_a_round_trip(
    backend: Backend,
) -> None:
    original = generation("gen_min")
    await store(backend, original)

    async with backend.uow(read_only=True) as uow:
        loaded = await uow.generations.get("t1", "gen_min")

    assert loaded is not None
    assert fields(loaded) == fields(original)


async def test_a_generation_saved_without_loading_it_first_is_written_with_its_new_images(
    backend: Backend,
) -> None:
    # The use case keeps the generation it created and saves it in a later unit of work
    # without reading it back (the hot path); the result must equal a load-modify-save.
    in_hand = generation("gen_1")
    await store(backend, in_hand)
    in_hand.start(T0 + timedelta(seconds=1))
    in_hand.succeed([image("gen_1", 0), image("gen_1", 1)], 2, T0 + timedelta(seconds=5))
    async with backend.uow() as uow:
        await uow.generations.save(in_hand)
        await uow.commit()
    assert in_hand.new_images == []

    async with backend.uow(read_only=True) as uow:
        loaded = await uow.generations.get("t1", "gen_1")
    assert loaded is not None
    assert loaded.status is GenerationStatus.SUCCEEDED
    assert loaded.credits_charged == 2
    assert loaded.updated_at == T0 + timedelta(seconds=5)
    assert [i.id for i in loaded.images] == ["img_gen_1_0", "img_gen_1_1"]


async def test_saving_a_generation_that_was_never_stored_raises(backend: Backend) -> None:
    ghost = generation("gen_ghost")
    async with backend.uow() as uow:
        # At save() (in memory) or when the SQL unit of work sends its deferred writes.
        with pytest.raises(LookupError, match="gen_ghost"):
            await _then_commit(uow, uow.generations.save(ghost))
    async with backend.uow(read_only=True) as uow:
        assert await uow.generations.get("t1", "gen_ghost") is None


async def test_saving_a_generation_updates_its_status_and_appends_images(backend: Backend) -> None:
    queued = generation("gen_1")
    await store(backend, queued)
    later = T0 + timedelta(seconds=30)

    async with backend.uow() as uow:
        running = await uow.generations.get("t1", "gen_1")
        assert running is not None
        running.start(T0 + timedelta(seconds=1))
        running.record_provider_job("job-1", T0 + timedelta(seconds=2))
        await uow.generations.save(running)
        await uow.commit()
    async with backend.uow() as uow:
        done = await uow.generations.get("t1", "gen_1")
        assert done is not None
        done.succeed([image("gen_1", 0), image("gen_1", 1)], 2, later, provider_cost_usd="0.08")
        await uow.generations.save(done)
        await uow.commit()
    async with backend.uow() as uow:
        more = await uow.generations.get("t1", "gen_1")
        assert more is not None
        more.images.append(image("gen_1", 2))
        await uow.generations.save(more)
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        loaded = await uow.generations.get("t1", "gen_1")
    assert loaded is not None
    assert loaded.status is GenerationStatus.SUCCEEDED
    assert (loaded.credits_charged, loaded.provider_cost_usd) == (2, "0.08")
    assert loaded.provider_job_id == "job-1"
    assert loaded.updated_at == later
    assert [i.id for i in loaded.images] == ["img_gen_1_0", "img_gen_1_1", "img_gen_1_2"]
    assert loaded.events == []  # events are not stored with the row: they go to the outbox


async def test_saving_something_never_added_raises_lookup_error(backend: Backend) -> None:
    # At save() (in memory) or when the SQL unit of work sends its deferred writes: before
    # its next query, at the latest at commit.
    async with backend.uow() as uow:
        with pytest.raises(LookupError, match="gen_ghost"):
            await _then_commit(uow, uow.generations.save(generation("gen_ghost")))
    async with backend.uow() as uow:
        with pytest.raises(LookupError, match="acct_ghost"):
            await _then_query(uow, uow.accounts.save(account("acct_ghost")))


async def _then_commit(uow: Any, saving: Awaitable[None]) -> None:
    await saving
    await uow.commit()


async def _then_query(uow: Any, saving: Awaitable[None]) -> None:
    await saving
    await uow.generations.get("t1", "gen_ghost")


async def test_changes_to_a_loaded_generation_are_stored_only_by_save(backend: Backend) -> None:
    original = generation("gen_1")
    await store(backend, original)
    original.prompt = "changed after add"

    async with backend.uow() as uow:
        loaded = await uow.generations.get("t1", "gen_1")
        assert loaded is not None
        loaded.prompt = "changed without save"
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        again = await uow.generations.get("t1", "gen_1")
    assert again is not None
    assert again.prompt == "a red fox in the snow"


async def test_another_tenants_generation_is_invisible(backend: Backend) -> None:
    await store(backend, generation("gen_1", tenant_id="t1", images=1))

    async with backend.uow(read_only=True) as uow:
        assert await uow.generations.get("t2", "gen_1") is None
        assert await uow.generations.get_by_image("t2", "img_gen_1_0") is None
        assert await uow.generations.get("t1", "gen_1") is not None
    assert await ids_of(backend, tenant_id="t2") == []


async def test_an_idempotency_key_finds_its_generation_only_in_its_own_tenant(
    backend: Backend,
) -> None:
    await store(
        backend,
        generation("gen_a", tenant_id="t1", idempotency_key="same-key"),
        generation("gen_b", tenant_id="t2", idempotency_key="same-key"),
        generation("gen_c", tenant_id="t1", idempotency_key="other-key"),
    )

    async with backend.uow(read_only=True) as uow:
        t1 = await uow.generations.get_by_idempotency_key("t1", "same-key")
        t2 = await uow.generations.get_by_idempotency_key("t2", "same-key")
        missing = await uow.generations.get_by_idempotency_key("t3", "same-key")
        unknown = await uow.generations.get_by_idempotency_key("t1", "never-used")
    assert (t1 and t1.id, t2 and t2.id, missing, unknown) == ("gen_a", "gen_b", None, None)


async def test_get_by_image_finds_the_generation_that_owns_the_image(backend: Backend) -> None:
    await store(backend, generation("gen_1", images=2), generation("gen_2", images=1))

    async with backend.uow(read_only=True) as uow:
        owner = await uow.generations.get_by_image("t1", "img_gen_1_1")
        other = await uow.generations.get_by_image("t1", "img_gen_2_0")
        unknown = await uow.generations.get_by_image("t1", "img_nope")
    assert owner is not None
    assert (owner.id, len(owner.images)) == ("gen_1", 2)
    assert other is not None
    assert other.id == "gen_2"
    assert unknown is None


async def test_get_by_reservation_finds_the_generation_holding_it(backend: Backend) -> None:
    await store(
        backend,
        generation("gen_1", reservation_id="res_1"),
        generation("gen_2", tenant_id="t2", reservation_id="res_2"),
    )

    async with backend.uow(read_only=True) as uow:
        first = await uow.generations.get_by_reservation("res_1")
        second = await uow.generations.get_by_reservation("res_2")
        unknown = await uow.generations.get_by_reservation("res_nope")
    assert (first and first.id, second and second.id, unknown) == ("gen_1", "gen_2", None)


# --- history: filters --------------------------------------------------------------------------


async def test_history_filters_by_status_provider_and_model(backend: Backend) -> None:
    await store(
        backend,
        generation("gen_1", status=GenerationStatus.SUCCEEDED, provider="local", model="a"),
        generation("gen_2", status=GenerationStatus.FAILED, provider="local", model="b"),
        generation("gen_3", status=GenerationStatus.SUCCEEDED, provider="openai", model="a"),
        generation(
            "gen_4", status=GenerationStatus.SUCCEEDED, provider="local", model="a", tenant_id="t2"
        ),
    )

    assert await ids_of(backend) == ["gen_3", "gen_2", "gen_1"]
    assert await ids_of(backend, status=GenerationStatus.SUCCEEDED) == ["gen_3", "gen_1"]
    assert await ids_of(backend, provider="local") == ["gen_2", "gen_1"]
    assert await ids_of(backend, model="a") == ["gen_3", "gen_1"]
    assert await ids_of(
        backend, status=GenerationStatus.SUCCEEDED, provider="local", model="a"
    ) == ["gen_1"]
    assert await ids_of(backend, status=GenerationStatus.CANCELED) == []


async def test_history_text_search_ignores_case(backend: Backend) -> None:
    await store(
        backend,
        generation("gen_1", prompt="A Red FOX in the snow"),
        generation("gen_2", prompt="a blue whale"),
    )

    assert await ids_of(backend, text="red fox") == ["gen_1"]
    assert await ids_of(backend, text="RED FOX") == ["gen_1"]
    assert await ids_of(backend, text="Whale") == ["gen_2"]
    assert await ids_of(backend, text="tiger") == []


async def test_history_text_search_takes_percent_and_underscore_literally(backend: Backend) -> None:
    await store(
        backend,
        generation("gen_1", prompt="100% cotton shirt"),
        generation("gen_2", prompt="1000 cotton shirts"),
        generation("gen_3", prompt="a snake_case label"),
        generation("gen_4", prompt="a snakeXcase label"),
        generation("gen_5", prompt=r"a back\slash"),
    )

    assert await ids_of(backend, text="100%") == ["gen_1"]
    assert await ids_of(backend, text="%") == ["gen_1"]
    assert await ids_of(backend, text="e_c") == ["gen_3"]
    assert await ids_of(backend, text="_") == ["gen_3"]
    assert await ids_of(backend, text="k\\s") == ["gen_5"]


async def test_history_text_search_ignores_case_beyond_ascii(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    await store(backend, generation("gen_1", prompt="ÉCLAIR AU CHOCOLAT"))

    assert await ids_of(backend, text="éclair") == ["gen_1"]


async def test_history_date_range_includes_its_start_and_excludes_its_end(backend: Backend) -> None:
    await store(
        backend,
        *(generation(f"gen_{h}", created_at=T0 + timedelta(hours=h)) for h in range(5)),
    )
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=3)

    assert await ids_of(backend, created_from=start, created_to=end) == ["gen_2", "gen_1"]
    assert await ids_of(backend, created_from=start) == ["gen_4", "gen_3", "gen_2", "gen_1"]
    assert await ids_of(backend, created_to=end) == ["gen_2", "gen_1", "gen_0"]
    # The same instants in another timezone select the same rows.
    assert await ids_of(
        backend, created_from=start.astimezone(CET), created_to=end.astimezone(CET)
    ) == ["gen_2", "gen_1"]


# --- history: pagination -----------------------------------------------------------------------


async def walk(backend: Backend, limit: int, **query: Any) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await history(backend, limit=limit, cursor=cursor, **query)
        pages += 1
        assert len(page.items) <= limit
        seen += [g.id for g in page.items]
        if page.next_cursor is None:
            return seen, pages
        assert len(page.items) == limit
        cursor = page.next_cursor


async def test_history_pages_walk_every_generation_newest_first_without_duplicates_or_gaps(
    backend: Backend,
) -> None:
    # Added in an order that is neither time nor id order; several share a created_at.
    stamps = {
        "gen_07": 3, "gen_02": 1, "gen_09": 0, "gen_04": 3, "gen_01": 2,
        "gen_08": 1, "gen_03": 3, "gen_06": 0, "gen_05": 2, "gen_10": 4,
    }  # fmt: skip
    await store(
        backend,
        *(generation(i, created_at=T0 + timedelta(minutes=m)) for i, m in stamps.items()),
        generation("gen_other", tenant_id="t2"),
    )
    expected = sorted(stamps, key=lambda i: (stamps[i], i), reverse=True)

    for limit in range(1, len(stamps) + 2):
        seen, pages = await walk(backend, limit)
        assert seen == expected, f"limit={limit}"
        assert pages == max(1, -(-len(stamps) // limit))


async def test_history_breaks_created_at_ties_by_id_descending(backend: Backend) -> None:
    await store(backend, *(generation(f"gen_{c}", created_at=T0) for c in "cabed"))

    seen, _ = await walk(backend, 2)

    assert seen == ["gen_e", "gen_d", "gen_c", "gen_b", "gen_a"]


async def test_history_pages_keep_their_filters(backend: Backend) -> None:
    await store(
        backend,
        *(
            generation(
                f"gen_{i:02d}",
                created_at=T0 + timedelta(minutes=i // 2),
                status=GenerationStatus.SUCCEEDED if i % 3 else GenerationStatus.FAILED,
            )
            for i in range(12)
        ),
    )

    seen, _ = await walk(backend, 3, status=GenerationStatus.SUCCEEDED)

    assert seen == [f"gen_{i:02d}" for i in reversed(range(12)) if i % 3]


async def test_a_cursor_that_was_never_issued_raises_invalid_parameter(backend: Backend) -> None:
    await store(backend, generation("gen_1"))
    garbage = [
        "garbage",
        "!!!",
        "",
        base64.urlsafe_b64encode(b"not a date|gen_1").decode(),
        base64.urlsafe_b64encode(b"no separator").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
    ]
    for cursor in garbage:
        with pytest.raises(InvalidParameter):
            await history(backend, cursor=cursor)


async def test_a_cursor_with_a_timestamp_without_timezone_raises_invalid_parameter(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    await store(backend, generation("gen_1"))
    forged = base64.urlsafe_b64encode(b"2025-03-01T12:00:00|gen_1").decode()

    with pytest.raises(InvalidParameter):
        await history(backend, cursor=forged)


async def test_a_page_limit_below_one_raises_invalid_parameter(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    await store(backend, generation("gen_1"))

    with pytest.raises(InvalidParameter):
        await history(backend, limit=0)


# --- assets ------------------------------------------------------------------------------------


async def store_images(
    backend: Backend, count: int, *, tenant_id: str = "t1"
) -> list[GeneratedImage]:
    owner = generation(f"gen_{tenant_id}", tenant_id=tenant_id, images=count)
    await store(backend, owner)
    return owner.images


async def test_an_asset_survives_a_round_trip_and_is_found_by_its_image(backend: Backend) -> None:
    [img] = await store_images(backend, 1)
    original = asset("ast_1", img, created_at=datetime(2025, 3, 1, 13, 0, 0, 5, tzinfo=CET))
    async with backend.uow() as uow:
        await uow.assets.add(original)
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        loaded = await uow.assets.get("t1", "ast_1")
        by_image = await uow.assets.get_by_image("t1", img.id)
        assert await uow.assets.get("t1", "ast_nope") is None
        assert await uow.assets.get_by_image("t1", "img_nope") is None

    assert loaded is not None
    assert by_image is not None
    assert fields(loaded) == fields(original)
    assert by_image.id == "ast_1"


async def test_saving_an_asset_persists_its_changes(backend: Backend) -> None:
    [img] = await store_images(backend, 1)
    async with backend.uow() as uow:
        await uow.assets.add(asset("ast_1", img))
        await uow.commit()

    async with backend.uow() as uow:
        loaded = await uow.assets.get("t1", "ast_1")
        assert loaded is not None
        loaded.tags = ("fox", "approved")
        loaded.title = "The fox"
        loaded.metadata = {**loaded.metadata, "client": "globex"}
        loaded.approval_state = ApprovalState.APPROVED
        loaded.version += 1
        loaded.updated_at = T0 + timedelta(days=1)
        await uow.assets.save(loaded)
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        again = await uow.assets.get("t1", "ast_1")
        assert [a.id for a in (await uow.assets.list(AssetQuery("t1", tag="approved"))).items] == [
            "ast_1"
        ]
    assert again is not None
    assert loaded is not None
    assert fields(again) == fields(loaded)


async def test_another_tenants_asset_is_invisible(backend: Backend) -> None:
    [img] = await store_images(backend, 1, tenant_id="t1")
    async with backend.uow() as uow:
        await uow.assets.add(asset("ast_1", img, tenant_id="t1"))
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        assert await uow.assets.get("t2", "ast_1") is None
        assert await uow.assets.get_by_image("t2", img.id) is None
        assert (await uow.assets.list(AssetQuery("t2"))).items == ()


async def test_assets_list_filters_by_exact_tag_and_title_and_pages_newest_first(
    backend: Backend,
) -> None:
    images = await store_images(backend, 7)
    tagged = [
        ("fox", "pet"), ("dog", "pet"), ("fox",), ("red_fox",), ("redxfox",), ("fox", "pet"),
        ("foxes",),
    ]  # fmt: skip
    async with backend.uow() as uow:
        for i, (img, tags) in enumerate(zip(images, tagged, strict=True)):
            title = "Winter FOX" if i % 2 else "summer dog"
            # Created out of id order, with one tie, to pin the (created_at, id) ordering.
            created = T0 + timedelta(minutes=[3, 1, 2, 5, 0, 3, 4][i])
            await uow.assets.add(asset(f"ast_{i}", img, tags=tags, title=title, created_at=created))
        await uow.commit()

    async def listed(limit: int = 100, **query: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        async with backend.uow(read_only=True) as uow:
            while True:
                page = await uow.assets.list(AssetQuery("t1", limit=limit, cursor=cursor, **query))
                seen += [a.id for a in page.items]
                if page.next_cursor is None:
                    return seen
                cursor = page.next_cursor

    everything = ["ast_3", "ast_6", "ast_5", "ast_0", "ast_2", "ast_1", "ast_4"]
    assert await listed() == everything
    for limit in (1, 2, 3, 7):
        assert await listed(limit) == everything
    assert await listed(2, tag="fox") == ["ast_5", "ast_0", "ast_2"]
    assert await listed(tag="pet") == ["ast_5", "ast_0", "ast_1"]
    assert await listed(tag="red_fox") == ["ast_3"]
    assert await listed(tag="fo") == []
    assert await listed(text="winter fox") == ["ast_3", "ast_5", "ast_1"]
    async with backend.uow(read_only=True) as uow:
        with pytest.raises(InvalidParameter):
            await uow.assets.list(AssetQuery("t1", cursor="garbage"))


# --- accounts, reservations, ledger ------------------------------------------------------------


async def test_create_if_missing_creates_once_and_leaves_an_existing_account_alone(
    backend: Backend,
) -> None:
    async with backend.uow() as uow:
        assert await uow.accounts.create_if_missing(account(balance=0)) is True
        assert await uow.accounts.create_if_missing(account(balance=0)) is False
        await uow.commit()
    async with backend.uow() as uow:
        acct = await uow.accounts.lock("acct_t1")
        assert acct is not None
        acct.grant("ent_1", Credits(50), T0)
        await uow.accounts.save(acct)
        await uow.commit()

    async with backend.uow() as uow:
        assert await uow.accounts.create_if_missing(account(balance=999)) is False
        await uow.commit()
    async with backend.uow(read_only=True) as uow:
        loaded = await uow.accounts.get("acct_t1")
        assert await uow.accounts.get("acct_nope") is None
    assert loaded is not None
    assert (loaded.tenant_id, loaded.balance, loaded.reserved) == ("t1", 50, 0)


async def test_saving_a_locked_account_persists_balance_and_reserved_and_appends_entries(
    backend: Backend,
) -> None:
    await open_account(backend, balance=100)
    now = T0 + timedelta(minutes=1)

    async with backend.uow() as uow:
        acct = await uow.accounts.lock("acct_t1")
        assert acct is not None
        assert acct.new_entries == []
        reservation = acct.reserve("res_1", Credits(30), now, now + timedelta(minutes=15))
        acct.grant("ent_2", Credits(5), now, memo="bonus")
        await uow.accounts.save(acct)
        await uow.accounts.add_reservation(reservation)
        assert acct.new_entries == []  # save appended them to the ledger
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        loaded = await uow.accounts.get("acct_t1")
        entries = await uow.accounts.entries("acct_t1")
    assert loaded is not None
    assert (loaded.balance, loaded.reserved, loaded.available) == (105, 30, 75)
    assert loaded.updated_at == now
    assert [(e.id, e.kind, e.amount, e.balance_after, e.memo) for e in entries] == [
        ("ent_grant", EntryKind.GRANT, 100, 100, None),
        ("ent_2", EntryKind.GRANT, 5, 105, "bonus"),
    ]


async def test_reservations_round_trip_with_their_status_and_resolution(backend: Backend) -> None:
    await open_account(backend, balance=100)
    expires = T0 + timedelta(minutes=15)
    async with backend.uow() as uow:
        acct = await uow.accounts.lock("acct_t1")
        assert acct is not None
        held = acct.reserve("res_b", Credits(10), T0, expires, reference="gen_1")
        other = acct.reserve("res_a", Credits(20), T0, expires)
        await uow.accounts.save(acct)
        await uow.accounts.add_reservation(held)
        await uow.accounts.add_reservation(other)
        await uow.commit()
    captured_at = T0 + timedelta(minutes=2)

    async with backend.uow() as uow:
        acct = await uow.accounts.lock("acct_t1")
        reservation = await uow.accounts.get_reservation("res_b")
        assert acct is not None
        assert reservation is not None
        assert (reservation.status, reservation.resolved_at) == (ReservationStatus.ACTIVE, None)
        acct.capture(reservation, Credits(7), captured_at, "ent_capture")
        await uow.accounts.save(acct)
        await uow.accounts.save_reservation(reservation)
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        loaded = await uow.accounts.get_reservation("res_b")
        listed = await uow.accounts.reservations("acct_t1")
        balance = await uow.accounts.get("acct_t1")
        entries = await uow.accounts.entries("acct_t1")
        assert await uow.accounts.get_reservation("res_nope") is None
    assert loaded is not None
    assert balance is not None
    assert fields(loaded) == fields(reservation)
    assert (loaded.status, loaded.captured_amount, loaded.resolved_at) == (
        ReservationStatus.CAPTURED, 7, captured_at,
    )  # fmt: skip
    assert (loaded.reference, loaded.expires_at) == ("gen_1", expires)
    assert [r.id for r in listed] == ["res_a", "res_b"]
    assert (balance.balance, balance.reserved) == (93, 20)
    assert entries[-1] == LedgerEntry(
        id="ent_capture",
        account_id="acct_t1",
        kind=EntryKind.CAPTURE,
        amount=-7,
        balance_after=93,
        created_at=captured_at,
        reservation_id="res_b",
        reference="gen_1",
    )


async def test_expired_reservations_lists_active_ones_past_expiry_soonest_first(
    backend: Backend,
) -> None:
    await open_account(backend, balance=100)
    now = T0 + timedelta(hours=1)
    async with backend.uow() as uow:
        acct = await uow.accounts.lock("acct_t1")
        assert acct is not None
        plan = {
            "res_late": now - timedelta(minutes=1),
            "res_early": now - timedelta(minutes=30),
            "res_exactly_now": now,
            "res_future": now + timedelta(seconds=1),
            "res_released": now - timedelta(minutes=40),
        }
        for reservation_id, expires_at in plan.items():
            reservation = acct.reserve(reservation_id, Credits(1), T0, expires_at)
            if reservation_id == "res_released":
                acct.release(reservation, T0 + timedelta(minutes=1))
            await uow.accounts.add_reservation(reservation)
        await uow.accounts.save(acct)
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        expired = await uow.accounts.expired_reservations(now, 10)
        first = await uow.accounts.expired_reservations(now, 1)
        before = await uow.accounts.expired_reservations(T0, 10)
    assert [r.id for r in expired] == ["res_early", "res_late", "res_exactly_now"]
    assert [r.id for r in first] == ["res_early"]
    assert before == []
    assert all(r.status is ReservationStatus.ACTIVE for r in expired)


async def test_ledger_entries_come_back_in_the_order_they_were_appended(backend: Backend) -> None:
    await open_account(backend, balance=0)
    # Same timestamp, ids out of order: only the insertion order can give this sequence.
    order = ["ent_m", "ent_c", "ent_x", "ent_a", "ent_q"]
    for chunk in (order[:3], order[3:]):
        async with backend.uow() as uow:
            acct = await uow.accounts.lock("acct_t1")
            assert acct is not None
            for entry_id in chunk:
                acct.grant(entry_id, Credits(1), T0)
            await uow.accounts.save(acct)
            await uow.commit()

    async with backend.uow(read_only=True) as uow:
        entries = await uow.accounts.entries("acct_t1")
        assert await uow.accounts.entries("acct_nope") == []
    assert [e.id for e in entries] == order
    assert [e.balance_after for e in entries] == [1, 2, 3, 4, 5]


# --- the unit of work --------------------------------------------------------------------------


async def assert_nothing_visible(backend: Backend) -> None:
    async with backend.uow(read_only=True) as uow:
        assert await uow.generations.get("t1", "gen_1") is None
        assert await uow.generations.get_by_idempotency_key("t1", "k") is None
        assert await uow.accounts.get("acct_t1") is None
        assert await uow.accounts.get_reservation("res_1") is None
        assert await uow.accounts.entries("acct_t1") == []
        assert (await uow.generations.list(HistoryQuery("t1"))).items == ()
    assert await backend.outbox() == []


async def test_rolls_back_uncommitted_work_by_default(backend: Backend) -> None:
    async with backend.uow() as uow:
        await uow.generations.add(generation("gen_1", idempotency_key="k", images=1))
        acct = account()
        await uow.accounts.create_if_missing(acct)
        acct.grant("ent_1", Credits(10), T0)
        await uow.accounts.save(acct)
        await uow.accounts.add_reservation(
            acct.reserve("res_1", Credits(1), T0, T0 + timedelta(minutes=1))
        )
        failed = generation("gen_2")
        failed.fail("boom", "it broke", T0)
        uow.record(failed.events)
        # Visible inside its own transaction...
        assert await uow.generations.get("t1", "gen_1") is not None

    # ...and nowhere once the block is left without commit().
    await assert_nothing_visible(backend)


async def test_an_explicit_rollback_discards_the_work_and_the_unit_stays_usable(
    backend: Backend,
) -> None:
    async with backend.uow() as uow:
        await uow.generations.add(generation("gen_1", idempotency_key="k"))
        broken = generation("gen_x")
        broken.cancel(T0)
        uow.record(broken.events)
        await uow.rollback()
        assert await uow.generations.get("t1", "gen_1") is None
        await uow.generations.add(generation("gen_after"))
        await uow.commit()

    async with backend.uow(read_only=True) as uow:
        assert await uow.generations.get("t1", "gen_1") is None
        assert await uow.generations.get("t1", "gen_after") is not None
    assert await backend.outbox() == []


async def test_an_exception_inside_the_block_discards_the_work(backend: Backend) -> None:
    class Boom(Exception):
        pass

    async def work_that_fails() -> None:
        async with backend.uow() as uow:
            await uow.generations.add(generation("gen_1", idempotency_key="k", images=1))
            await uow.accounts.create_if_missing(account())
            raise Boom

    with pytest.raises(Boom):
        await work_that_fails()

    await assert_nothing_visible(backend)


async def test_committed_work_is_visible_to_later_units_of_work(backend: Backend) -> None:
    async with backend.uow() as uow:
        await uow.generations.add(generation("gen_1"))
        await uow.commit()
        await uow.generations.add(generation("gen_2"))  # after a commit: a new transaction
        await uow.commit()
        await uow.generations.add(generation("gen_3"))  # never committed

    assert await ids_of(backend) == ["gen_2", "gen_1"]


async def test_recorded_events_reach_the_outbox_only_on_commit(backend: Backend) -> None:
    failed_at = T0 + timedelta(seconds=3)
    await store(backend, generation("gen_1", status=GenerationStatus.RUNNING))

    async with backend.uow() as uow:
        loaded = await uow.generations.get("t1", "gen_1")
        assert loaded is not None
        loaded.fail("provider_unavailable", "down", failed_at)
        uow.record(loaded.events)
        assert loaded.events == []  # record() takes the events off the aggregate
        await uow.generations.save(loaded)
        assert await backend.outbox() == []  # not before commit
        await uow.commit()

    assert await backend.outbox() == [
        (
            "generation.failed",
            "gen_1",
            {"tenant_id": "t1", "code": "provider_unavailable", "message": "down"},
            failed_at,
        )
    ]
