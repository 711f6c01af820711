"""SQL repositories: the persistence ports over one ``AsyncSession`` (one transaction)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from imagegen.application.pagination import decode_cursor, encode_cursor
from imagegen.application.ports import AssetQuery, HistoryQuery, Page
from imagegen.domain.asset import Asset
from imagegen.domain.billing import CreditAccount, LedgerEntry, Reservation, ReservationStatus
from imagegen.domain.errors import InvalidParameter
from imagegen.domain.generation import Generation
from imagegen.infrastructure.persistence import mappers
from imagegen.infrastructure.persistence.orm import (
    AccountRecord,
    AssetRecord,
    GenerationRecord,
    ImageRecord,
    LedgerEntryRecord,
    ReservationRecord,
)
from imagegen.infrastructure.persistence.writes import BufferedSession


def _keep(session: AsyncSession, record: object | None) -> None:
    """Hold a strong reference to a loaded record until the unit of work ends.

    The session's identity map holds records weakly; the repositories hand out domain objects
    and drop the records, so without this every ``save()`` would select the row again."""
    if record is not None:
        session.info.setdefault("imagegen_loaded", []).append(record)


# The statements of every generation, built once: building a statement (coercing its clauses
# into SQL expressions) costs more than executing it; SQLAlchemy caches the compiled form.


# Accounts and reservations are read as plain rows (Core), not ORM records: they are written
# back by primary key (deferred UPDATEs), so the identity map has nothing to track.


@functools.cache
def _account_statement(for_update: bool) -> Any:
    table = cast(Table, AccountRecord.__table__)
    statement = select(table).where(table.c.id == bindparam("account_id"))
    return statement.with_for_update() if for_update else statement


@functools.cache
def _reservation_statement() -> Any:
    table = cast(Table, ReservationRecord.__table__)
    return select(table).where(table.c.id == bindparam("reservation_id"))


def insert_later(session: AsyncSession, records: Sequence[Any]) -> None:
    """INSERT ``records`` (ORM records, never added to the session) with the unit of work's
    deferred writes (see ``writes``): the ORM's bookkeeping costs more than the insert, and
    nothing in this unit of work reads these rows back as records. Only the columns set on a
    record are written (the others get their defaults). Rows go in call order, after whatever
    the session was given before them."""
    for record in records:
        table = record.__table__
        values = vars(record)
        _buffered(session).defer_insert(
            table, [{c.key: values[c.key] for c in table.columns if c.key in values}]
        )


def _buffered(session: AsyncSession) -> BufferedSession:
    if not isinstance(session, BufferedSession):
        raise TypeError("the SQL repositories need a BufferedSession (see SqlUnitOfWorkFactory)")
    return session


def _columns(record: object, table: Any) -> dict[str, Any]:
    """A mapper's output (written on ``_Values``) as column key → value."""
    values = vars(record)
    return {c.key: values[c.key] for c in table.columns if c.key in values}


class _Values:
    """Plain attributes, where a mapper writes a record's column values to be read back."""


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise InvalidParameter(f"A page holds at least one item; got limit={limit}.")


def _keyset(model: Any, cursor: str | None) -> Any:
    if cursor is None:
        return None
    created_at, item_id = decode_cursor(cursor)
    return or_(
        model.created_at < created_at,
        and_(model.created_at == created_at, model.id < item_id),
    )


class SqlGenerationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _select(self) -> Any:
        return select(GenerationRecord).options(selectinload(GenerationRecord.images))

    async def _one(self, *conditions: Any) -> Generation | None:
        record = (
            await self._session.execute(self._select().where(*conditions))
        ).scalar_one_or_none()
        _keep(self._session, record)
        return mappers.generation_to_domain(record, record.images) if record else None

    async def add(self, generation: Generation) -> None:
        values = _Values()  # the mapper's output, without the ORM's attribute tracking
        mappers.generation_to_record(generation, cast(GenerationRecord, values))
        table = cast(Table, GenerationRecord.__table__)
        _buffered(self._session).defer_insert(table, [_columns(values, table)])
        insert_later(self._session, [mappers.image_to_record(i) for i in generation.images])
        generation.new_images.clear()

    async def save(self, generation: Generation) -> None:
        key = self._session.sync_session.identity_key(GenerationRecord, generation.id)
        record = self._session.sync_session.identity_map.get(key)
        if isinstance(record, GenerationRecord):
            # Loaded here (always with its images): append whatever images it lacks.
            mappers.generation_to_record(generation, record)
            known = {image.id for image in record.images}
            for image in generation.images:
                if image.id not in known:
                    self._session.add(mappers.image_to_record(image))
        else:
            # Not loaded in this unit of work: write by primary key instead of reading the row
            # (and its images) back first; this is the hot path of every generation.
            values = _Values()  # the mapper's output, without the ORM's attribute tracking
            mappers.generation_to_record(generation, cast(GenerationRecord, values))
            table = cast(Table, GenerationRecord.__table__)
            written = _columns(values, table)  # a column the mapper does not write is kept
            _buffered(self._session).defer_update(
                table, generation.id, written, what=f"generation {generation.id}"
            )
            insert_later(self._session, [mappers.image_to_record(i) for i in generation.new_images])
        generation.new_images.clear()
        # Everything deferred or pending is written before the next query, at the latest by
        # the commit.

    async def get(self, tenant_id: str, generation_id: str) -> Generation | None:
        return await self._one(
            GenerationRecord.id == generation_id, GenerationRecord.tenant_id == tenant_id
        )

    async def get_by_idempotency_key(self, tenant_id: str, key: str) -> Generation | None:
        return await self._one(
            GenerationRecord.tenant_id == tenant_id, GenerationRecord.idempotency_key == key
        )

    async def get_by_reservation(self, reservation_id: str) -> Generation | None:
        return await self._one(GenerationRecord.reservation_id == reservation_id)

    async def get_by_image(self, tenant_id: str, image_id: str) -> Generation | None:
        owner = select(ImageRecord.generation_id).where(ImageRecord.id == image_id)
        return await self._one(
            GenerationRecord.id.in_(owner.scalar_subquery()),
            GenerationRecord.tenant_id == tenant_id,
        )

    async def list(self, query: HistoryQuery) -> Page[Generation]:
        _check_limit(query.limit)
        conditions: list[Any] = [GenerationRecord.tenant_id == query.tenant_id]
        if query.status is not None:
            conditions.append(GenerationRecord.status == query.status.value)
        if query.provider is not None:
            conditions.append(GenerationRecord.provider == query.provider)
        if query.model is not None:
            conditions.append(GenerationRecord.model == query.model)
        if query.text is not None:
            conditions.append(GenerationRecord.prompt.icontains(query.text, autoescape=True))
        if query.created_from is not None:
            conditions.append(GenerationRecord.created_at >= query.created_from)
        if query.created_to is not None:
            conditions.append(GenerationRecord.created_at < query.created_to)
        keyset = _keyset(GenerationRecord, query.cursor)
        if keyset is not None:
            conditions.append(keyset)
        statement = (
            self._select()
            .where(*conditions)
            .order_by(GenerationRecord.created_at.desc(), GenerationRecord.id.desc())
            .limit(query.limit + 1)
        )
        records = list((await self._session.execute(statement)).scalars())
        more = len(records) > query.limit
        records = records[: query.limit]
        items = tuple(mappers.generation_to_domain(r, r.images) for r in records)
        cursor = encode_cursor(records[-1].created_at, records[-1].id) if more else None
        return Page(items, cursor)


class SqlAssetRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, asset: Asset) -> None:
        record = AssetRecord()
        mappers.asset_to_record(asset, record)
        # An asset references its image, perhaps one added in this unit of work: without a
        # relationship between them the ORM would not order the inserts, so write those first.
        if self._session.new:
            await self._session.flush()
        self._session.add(record)

    async def save(self, asset: Asset) -> None:
        record = await self._session.get(AssetRecord, asset.id)
        if record is None:
            raise LookupError(f"asset {asset.id} is not stored")
        mappers.asset_to_record(asset, record)

    async def _one(self, *conditions: Any) -> Asset | None:
        record = (
            await self._session.execute(select(AssetRecord).where(*conditions))
        ).scalar_one_or_none()
        _keep(self._session, record)
        return mappers.asset_to_domain(record) if record else None

    async def get(self, tenant_id: str, asset_id: str) -> Asset | None:
        return await self._one(AssetRecord.id == asset_id, AssetRecord.tenant_id == tenant_id)

    async def get_by_image(self, tenant_id: str, image_id: str) -> Asset | None:
        return await self._one(AssetRecord.image_id == image_id, AssetRecord.tenant_id == tenant_id)

    async def list(self, query: AssetQuery) -> Page[Asset]:
        _check_limit(query.limit)
        conditions: list[Any] = [AssetRecord.tenant_id == query.tenant_id]
        if query.tag is not None:
            conditions.append(AssetRecord.tags_text.contains(f"|{query.tag}|", autoescape=True))
        if query.text is not None:
            conditions.append(AssetRecord.title.icontains(query.text, autoescape=True))
        keyset = _keyset(AssetRecord, query.cursor)
        if keyset is not None:
            conditions.append(keyset)
        statement = (
            select(AssetRecord)
            .where(*conditions)
            .order_by(AssetRecord.created_at.desc(), AssetRecord.id.desc())
            .limit(query.limit + 1)
        )
        records = list((await self._session.execute(statement)).scalars())
        more = len(records) > query.limit
        records = records[: query.limit]
        cursor = encode_cursor(records[-1].created_at, records[-1].id) if more else None
        return Page(tuple(mappers.asset_to_domain(r) for r in records), cursor)


_ACCOUNTS = cast(Table, AccountRecord.__table__)
_RESERVATIONS = cast(Table, ReservationRecord.__table__)


class SqlAccountRepository:
    """Credit accounts and their ledger.

    ``lock`` takes ``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite every writing
    transaction already starts with ``BEGIN IMMEDIATE`` (see ``engine``), which holds the
    database's write lock, so reservations in other processes wait for it.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def _load(self, account_id: str, *, for_update: bool) -> CreditAccount | None:
        statement = _account_statement(for_update)
        parameters = {"account_id": account_id}
        row = await _buffered(self._session).one_or_none(statement, parameters)
        return mappers.account_to_domain(cast(AccountRecord, row)) if row else None

    async def lock(self, account_id: str) -> CreditAccount | None:
        return await self._load(account_id, for_update=True)

    async def get(self, account_id: str) -> CreditAccount | None:
        return await self._load(account_id, for_update=False)

    async def create_if_missing(self, account: CreditAccount) -> bool:
        values = {
            "id": account.id,
            "tenant_id": account.tenant_id,
            "balance": account.balance,
            "reserved": account.reserved,
            "created_at": account.created_at,
            "updated_at": account.updated_at,
            "plan_id": account.plan_id,
            "has_budgets": account.has_budgets,
        }
        dialect = self._session.bind.dialect.name if self._session.bind else "sqlite"
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = (
            insert(AccountRecord)
            .values(**values)
            .on_conflict_do_nothing()
            .returning(AccountRecord.id)
        )
        # RETURNING yields a row only when this statement inserted it (rowcount is not
        # reliable for ON CONFLICT DO NOTHING across drivers).
        return (await self._session.execute(statement)).first() is not None

    async def save(self, account: CreditAccount) -> None:
        values = {
            "balance": account.balance,
            "reserved": account.reserved,
            "updated_at": account.updated_at,
            "plan_id": account.plan_id,
            "has_budgets": account.has_budgets,
        }
        session = _buffered(self._session)
        session.defer_update(_ACCOUNTS, account.id, values, what=f"account {account.id}")
        insert_later(session, [mappers.entry_to_record(e) for e in account.new_entries])
        account.new_entries.clear()

    async def add_reservation(self, reservation: Reservation) -> None:
        values = _Values()
        mappers.reservation_to_record(reservation, cast(ReservationRecord, values))
        _buffered(self._session).defer_insert(_RESERVATIONS, [_columns(values, _RESERVATIONS)])

    async def save_reservation(self, reservation: Reservation) -> None:
        values = _Values()
        mappers.reservation_to_record(reservation, cast(ReservationRecord, values))
        written = _columns(values, _RESERVATIONS)
        written.pop("id", None)
        _buffered(self._session).defer_update(
            _RESERVATIONS, reservation.id, written, what=f"reservation {reservation.id}"
        )

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        parameters = {"reservation_id": reservation_id}
        row = await _buffered(self._session).one_or_none(_reservation_statement(), parameters)
        return mappers.reservation_to_domain(cast(ReservationRecord, row)) if row else None

    async def expired_reservations(self, now: datetime, limit: int) -> Sequence[Reservation]:
        statement = (
            select(ReservationRecord)
            .where(
                ReservationRecord.status == ReservationStatus.ACTIVE.value,
                ReservationRecord.expires_at <= now,
            )
            .order_by(ReservationRecord.expires_at)
            .limit(limit)
        )
        records = (await self._session.execute(statement)).scalars()
        return [mappers.reservation_to_domain(r) for r in records]

    async def entries(self, account_id: str) -> Sequence[LedgerEntry]:
        statement = (
            select(LedgerEntryRecord)
            .where(LedgerEntryRecord.account_id == account_id)
            .order_by(LedgerEntryRecord.seq)
        )
        records = (await self._session.execute(statement)).scalars()
        return [mappers.entry_to_domain(r) for r in records]

    async def reservations(self, account_id: str) -> Sequence[Reservation]:
        statement = (
            select(ReservationRecord)
            .where(ReservationRecord.account_id == account_id)
            .order_by(ReservationRecord.id)
        )
        return [
            mappers.reservation_to_domain(r)
            for r in (await self._session.execute(statement)).scalars()
        ]
