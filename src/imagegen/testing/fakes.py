"""In-memory fakes of imagegen's ports, for testing code that uses imagegen.

See the package docstring (``imagegen.testing``) for how to plug them in. Every fake keeps to
the contract of the port it implements (``imagegen.application.ports``); the repositories
and unit of work pass the same contract tests as the SQL adapters.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar, cast

import attrs

from imagegen.application.pagination import decode_cursor, encode_cursor
from imagegen.application.ports import (
    AssetQuery,
    HistoryQuery,
    ImageInfo,
    MeterableUsage,
    Page,
    ProviderHealth,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
    StoredBlob,
    UsageQuery,
)
from imagegen.application.webhook_ports import OutboxEvent
from imagegen.domain.asset import Asset, Provenance
from imagegen.domain.billing import CreditAccount, LedgerEntry, Reservation, ReservationStatus
from imagegen.domain.errors import InvalidParameter, StorageError
from imagegen.domain.events import DomainEvent
from imagegen.domain.generation import Generation
from imagegen.domain.plans import Alert, Budget, Counter, Subscription
from imagegen.domain.usage import UsageEvent, UsageKind
from imagegen.domain.values import ImageFormat, Money, Seed
from imagegen.testing.fakes_access import (
    AccessState,
    AccessTransaction,
    InMemoryApiKeyRepository,
    InMemoryIdempotencyRepository,
    InMemoryTenantRepository,
)
from imagegen.testing.fakes_webhooks import WebhookState, WebhookTransaction

if TYPE_CHECKING:
    from imagegen.application.ports import (
        AccountRepository,
        AssetRepository,
        BillingRepository,
        BlobStorage,
        Clock,
        GenerationRepository,
        IdGenerator,
        ImageProvider,
        UnitOfWork,
        UnitOfWorkFactory,
        UsageRepository,
    )
    from imagegen.application.webhook_ports import (
        OutboxRepository,
        WebhookRepository,
        WebhookUnitOfWork,
        WebhookUnitOfWorkFactory,
    )

__all__ = [
    "InMemoryBlobStorage",
    "InMemoryUnitOfWork",
    "InMemoryUnitOfWorkFactory",
    "ManualClock",
    "ScriptedProvider",
    "SequentialIds",
]

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)


# --- time and ids ------------------------------------------------------------------------------


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"ManualClock needs a timezone-aware datetime; got {when!r}")
    return when.astimezone(UTC)


class ManualClock:
    """A ``Clock`` that only moves when told to.

    >>> clock = ManualClock(datetime(2025, 1, 1, tzinfo=UTC))
    >>> clock.advance(seconds=90).isoformat()
    '2025-01-01T00:01:30+00:00'
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self._now = _utc(start)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> datetime:
        """Jump to ``when`` (timezone-aware; stored as UTC). Going back in time is allowed."""
        self._now = _utc(when)
        return self._now

    def advance(self, delta: timedelta | None = None, *, seconds: float = 0) -> datetime:
        """Move forward by ``delta`` and/or ``seconds``; returns the new time."""
        self._now += (delta or timedelta()) + timedelta(seconds=seconds)
        return self._now


class SequentialIds:
    """An ``IdGenerator`` giving ``prefix_000001``, ``prefix_000002``, … (one counter per
    prefix), so ids in assertions are predictable and still sort by creation.

    More ids than ``width`` digits allow would break that order, so the generator refuses
    them (raise ``width``).
    """

    def __init__(self, *, width: int = 6) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        self._width = width
        self._issued: dict[str, int] = {}
        self._lock = threading.Lock()

    def new(self, prefix: str) -> str:
        with self._lock:
            value = self._issued.get(prefix, 0) + 1
            if value >= 10**self._width:
                raise OverflowError(
                    f"SequentialIds(width={self._width}) ran out of {prefix!r} ids; more would "
                    "stop sorting by creation. Use a larger width."
                )
            self._issued[prefix] = value
        return self._format(prefix, value)

    def peek(self, prefix: str) -> str:
        """The id the next ``new(prefix)`` will return, without using it up."""
        with self._lock:
            return self._format(prefix, self._issued.get(prefix, 0) + 1)

    def _format(self, prefix: str, value: int) -> str:
        return f"{prefix}_{value:0{self._width}d}"


# --- persistence -------------------------------------------------------------------------------

D = TypeVar("D", Generation, Asset)


def _page(items: Iterable[D], limit: int, cursor: str | None) -> Page[D]:
    if limit < 1:
        raise InvalidParameter(f"limit must be at least 1; got {limit}.")
    rows = list(items)
    if cursor is not None:
        after = decode_cursor(cursor)
        rows = [r for r in rows if (r.created_at, r.id) < after]
    rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    return Page(tuple(copy.deepcopy(r) for r in rows), next_cursor)


@attrs.define
class _Tables:
    """One state of the database: committed rows, or one transaction's pending writes."""

    generations: dict[str, Generation] = attrs.field(factory=dict)
    assets: dict[str, Asset] = attrs.field(factory=dict)
    accounts: dict[str, CreditAccount] = attrs.field(factory=dict)
    reservations: dict[str, Reservation] = attrs.field(factory=dict)
    entries: list[LedgerEntry] = attrs.field(factory=list)
    usage: dict[str, UsageEvent] = attrs.field(factory=dict)
    metered: dict[str, datetime] = attrs.field(factory=dict)
    subscriptions: dict[str, Subscription] = attrs.field(factory=dict)
    budgets: dict[str, Budget] = attrs.field(factory=dict)
    counters: dict[str, Counter] = attrs.field(factory=dict)
    alerts: dict[str, Alert] = attrs.field(factory=dict)
    # keys deleted, per table (only budgets are ever deleted)
    removed: dict[str, set[str]] = attrs.field(factory=dict)


R = TypeVar(
    "R",
    Generation,
    Asset,
    CreditAccount,
    Reservation,
    UsageEvent,
    Subscription,
    Budget,
    Counter,
    Alert,
)
S = TypeVar("S")


@attrs.frozen
class _Table(Generic[R]):
    name: str

    def of(self, tables: _Tables) -> dict[str, R]:
        rows: dict[str, R] = getattr(tables, self.name)
        return rows

    def apply(self, source: _Tables, target: _Tables) -> None:
        rows = self.of(target)
        rows.update(self.of(source))
        for key in source.removed.get(self.name, ()):
            rows.pop(key, None)


GENERATIONS: _Table[Generation] = _Table("generations")
ASSETS: _Table[Asset] = _Table("assets")
ACCOUNTS: _Table[CreditAccount] = _Table("accounts")
RESERVATIONS: _Table[Reservation] = _Table("reservations")
USAGE: _Table[UsageEvent] = _Table("usage")
SUBSCRIPTIONS: _Table[Subscription] = _Table("subscriptions")
BUDGETS: _Table[Budget] = _Table("budgets")
COUNTERS: _Table[Counter] = _Table("counters")
ALERTS: _Table[Alert] = _Table("alerts")
TABLES = (
    GENERATIONS,
    ASSETS,
    ACCOUNTS,
    RESERVATIONS,
    USAGE,
    SUBSCRIPTIONS,
    BUDGETS,
    COUNTERS,
    ALERTS,
)


def _stored(value: S) -> S:
    """A deep copy of ``value`` as the SQL adapters would give it back: datetimes in UTC
    (naive ones refused, as by the SQL column type). A ``Provenance`` is kept as it is: the
    SQL adapter stores it as JSON with ISO timestamps, which keep their offset."""
    result: Any = value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware ones")
        result = value.astimezone(UTC)
    elif isinstance(value, Provenance):
        result = copy.deepcopy(value)
    elif attrs.has(type(value)):
        instance: Any = value
        changes = {
            f.name: _stored(getattr(value, f.name)) for f in attrs.fields(type(instance)) if f.init
        }
        result = attrs.evolve(instance, **changes)
    elif isinstance(value, list):
        result = [_stored(item) for item in value]
    elif isinstance(value, tuple):
        result = tuple(_stored(item) for item in value)
    elif isinstance(value, dict):
        result = {key: _stored(item) for key, item in value.items()}
    return cast(S, result)


def _stored_generation(generation: Generation) -> Generation:
    stored = _stored(attrs.evolve(generation, events=[]))
    # events go to the outbox through UnitOfWork.record, not with the row
    stored.images.sort(key=lambda image: image.index)
    return stored


def _stored_account(account: CreditAccount) -> CreditAccount:
    return _stored(attrs.evolve(account, new_entries=[]))


def _outbox_event(event: DomainEvent) -> DomainEvent:
    """The event as the SQL outbox keeps it: ``data`` goes through JSON (so it must be
    JSON-serializable, or the commit fails), ``occurred_at`` in UTC."""
    try:
        data = json.loads(json.dumps(event.data))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event {event.name} has data that is not JSON: {exc}") from exc
    return DomainEvent(event.name, event.aggregate_id, _stored(event.occurred_at), data)


class _Transaction:
    """A transaction's writes, on deep copies, applied to the shared state only on commit.

    Reads see the committed state overlaid with this transaction's own writes (PostgreSQL's
    default READ COMMITTED isolation, as seen by one transaction).
    """

    def __init__(self, factory: InMemoryUnitOfWorkFactory) -> None:
        self.factory = factory
        self.pending = _Tables()
        self.inserted: dict[str, set[str]] = {table.name: set() for table in TABLES}
        self.events: list[DomainEvent] = []
        self.locks: set[str] = set()

    @property
    def committed(self) -> _Tables:
        return self.factory._committed

    def view(self, table: _Table[R]) -> dict[str, R]:
        rows = {**table.of(self.committed), **table.of(self.pending)}
        for key in self.pending.removed.get(table.name, ()):
            rows.pop(key, None)
        return rows

    def row(self, table: _Table[R], key: str) -> R | None:
        if key in self.pending.removed.get(table.name, ()):
            return None
        pending = table.of(self.pending)
        return pending[key] if key in pending else table.of(self.committed).get(key)

    def write(self, table: _Table[R], key: str, value: R, *, insert: bool = False) -> None:
        self.pending.removed.get(table.name, set()).discard(key)
        table.of(self.pending)[key] = value
        if insert:
            self.inserted[table.name].add(key)

    def remove(self, table: _Table[R], key: str) -> None:
        table.of(self.pending).pop(key, None)
        self.pending.removed.setdefault(table.name, set()).add(key)

    def entries(self) -> list[LedgerEntry]:
        return [*self.committed.entries, *self.pending.entries]

    def clear(self) -> None:
        self.pending = _Tables()
        for keys in self.inserted.values():
            keys.clear()
        self.events.clear()


class _Conflict(ValueError):
    """A write the SQL schema would refuse (a duplicate key or a missing referenced row)."""


def _check_generation(tx: _Transaction, generation: Generation) -> None:
    for other in tx.view(GENERATIONS).values():
        if other.id == generation.id:
            raise _Conflict(f"generation {generation.id} is already stored")
        if (
            generation.idempotency_key is not None
            and other.tenant_id == generation.tenant_id
            and other.idempotency_key == generation.idempotency_key
        ):
            raise _Conflict(
                f"tenant {generation.tenant_id} already has a generation with idempotency key "
                f"{generation.idempotency_key!r}"
            )


def _check_asset(tx: _Transaction, asset: Asset) -> None:
    for other in tx.view(ASSETS).values():
        if other.id == asset.id:
            raise _Conflict(f"asset {asset.id} is already stored")
        if other.tenant_id == asset.tenant_id and other.image_id == asset.image_id:
            raise _Conflict(f"image {asset.image_id} already has an asset")
    images = (image.id for g in tx.view(GENERATIONS).values() for image in g.images)
    if asset.image_id not in images:
        raise _Conflict(f"asset {asset.id} refers to image {asset.image_id}, which is not stored")


def _check_reservation(tx: _Transaction, reservation: Reservation) -> None:
    if tx.row(RESERVATIONS, reservation.id) is not None:
        raise _Conflict(f"reservation {reservation.id} is already stored")
    if tx.row(ACCOUNTS, reservation.account_id) is None:
        raise _Conflict(
            f"reservation {reservation.id} refers to account {reservation.account_id}, "
            "which is not stored"
        )


def _check_entries(tx: _Transaction, new: Sequence[LedgerEntry]) -> None:
    ids = {e.id for e in tx.entries()}
    reservations = {e.reservation_id for e in tx.entries() if e.reservation_id is not None}
    for entry in new:
        if entry.id in ids:
            raise _Conflict(f"ledger entry {entry.id} is already stored")
        if entry.reservation_id is not None and entry.reservation_id in reservations:
            raise _Conflict(f"reservation {entry.reservation_id} already has a ledger entry")
        ids.add(entry.id)
        if entry.reservation_id is not None:
            reservations.add(entry.reservation_id)


class InMemoryGenerationRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def _find(self, predicate: Callable[[Generation], bool]) -> Generation | None:
        found = next((g for g in self._tx.view(GENERATIONS).values() if predicate(g)), None)
        return copy.deepcopy(found)

    async def add(self, generation: Generation) -> None:
        _check_generation(self._tx, generation)
        self._tx.write(GENERATIONS, generation.id, _stored_generation(generation), insert=True)

    async def save(self, generation: Generation) -> None:
        current = self._tx.row(GENERATIONS, generation.id)
        if current is None:
            raise LookupError(f"generation {generation.id} is not stored")
        stored = _stored_generation(generation)
        # Like the SQL repository: stored images never change; new ones are appended.
        known = {image.id for image in current.images}
        stored.images = sorted(
            [*current.images, *(i for i in stored.images if i.id not in known)],
            key=lambda image: image.index,
        )
        stored.new_images = []
        generation.new_images.clear()  # written, as the SQL repository does
        self._tx.write(GENERATIONS, generation.id, stored)

    async def get(self, tenant_id: str, generation_id: str) -> Generation | None:
        found = self._tx.row(GENERATIONS, generation_id)
        return copy.deepcopy(found) if found and found.tenant_id == tenant_id else None

    async def get_by_idempotency_key(self, tenant_id: str, key: str) -> Generation | None:
        return self._find(lambda g: g.tenant_id == tenant_id and g.idempotency_key == key)

    async def get_by_reservation(self, reservation_id: str) -> Generation | None:
        return self._find(lambda g: g.reservation_id == reservation_id)

    async def get_by_image(self, tenant_id: str, image_id: str) -> Generation | None:
        return self._find(
            lambda g: g.tenant_id == tenant_id and any(i.id == image_id for i in g.images)
        )

    async def list(self, query: HistoryQuery) -> Page[Generation]:
        text = query.text.lower() if query.text is not None else None

        def matches(g: Generation) -> bool:
            return (
                g.tenant_id == query.tenant_id
                and (query.status is None or g.status == query.status)
                and (query.provider is None or g.provider == query.provider)
                and (query.model is None or g.model == query.model)
                and (text is None or text in g.prompt.lower())
                and (query.created_from is None or g.created_at >= query.created_from)
                and (query.created_to is None or g.created_at < query.created_to)
            )

        rows = (g for g in self._tx.view(GENERATIONS).values() if matches(g))
        return _page(rows, query.limit, query.cursor)


class InMemoryAssetRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def add(self, asset: Asset) -> None:
        _check_asset(self._tx, asset)
        self._tx.write(ASSETS, asset.id, _stored(asset), insert=True)

    async def save(self, asset: Asset) -> None:
        if self._tx.row(ASSETS, asset.id) is None:
            raise LookupError(f"asset {asset.id} is not stored")
        self._tx.write(ASSETS, asset.id, _stored(asset))

    async def get(self, tenant_id: str, asset_id: str) -> Asset | None:
        found = self._tx.row(ASSETS, asset_id)
        return copy.deepcopy(found) if found and found.tenant_id == tenant_id else None

    async def get_by_image(self, tenant_id: str, image_id: str) -> Asset | None:
        found = next(
            (
                a
                for a in self._tx.view(ASSETS).values()
                if a.tenant_id == tenant_id and a.image_id == image_id
            ),
            None,
        )
        return copy.deepcopy(found)

    async def list(self, query: AssetQuery) -> Page[Asset]:
        text = query.text.lower() if query.text is not None else None

        def matches(a: Asset) -> bool:
            return (
                a.tenant_id == query.tenant_id
                and (query.tag is None or query.tag in a.tags)
                and (text is None or text in a.title.lower())
            )

        rows = (a for a in self._tx.view(ASSETS).values() if matches(a))
        return _page(rows, query.limit, query.cursor)


class InMemoryAccountRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def lock(self, account_id: str) -> CreditAccount | None:
        await self._tx.factory._acquire(account_id, self._tx)
        return await self.get(account_id)

    async def get(self, account_id: str) -> CreditAccount | None:
        return copy.deepcopy(self._tx.row(ACCOUNTS, account_id))

    async def create_if_missing(self, account: CreditAccount) -> bool:
        taken = any(
            a.id == account.id or a.tenant_id == account.tenant_id
            for a in self._tx.view(ACCOUNTS).values()
        )
        if taken:
            return False
        self._tx.write(ACCOUNTS, account.id, _stored_account(account), insert=True)
        return True

    async def save(self, account: CreditAccount) -> None:
        current = self._tx.row(ACCOUNTS, account.id)
        if current is None:
            raise LookupError(f"account {account.id} is not stored")
        _check_entries(self._tx, account.new_entries)
        entries = _stored(account.new_entries)
        stored = attrs.evolve(
            current,
            balance=account.balance,
            reserved=account.reserved,
            updated_at=_stored(account.updated_at),
            plan_id=account.plan_id,
            has_budgets=account.has_budgets,
        )
        self._tx.write(ACCOUNTS, account.id, stored)
        self._tx.pending.entries.extend(entries)
        account.new_entries.clear()

    async def add_reservation(self, reservation: Reservation) -> None:
        _check_reservation(self._tx, reservation)
        self._tx.write(RESERVATIONS, reservation.id, _stored(reservation), insert=True)

    async def save_reservation(self, reservation: Reservation) -> None:
        if self._tx.row(RESERVATIONS, reservation.id) is None:
            raise LookupError(f"reservation {reservation.id} is not stored")
        self._tx.write(RESERVATIONS, reservation.id, _stored(reservation))

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        return copy.deepcopy(self._tx.row(RESERVATIONS, reservation_id))

    async def expired_reservations(self, now: datetime, limit: int) -> Sequence[Reservation]:
        expired = [
            r
            for r in self._tx.view(RESERVATIONS).values()
            if r.status is ReservationStatus.ACTIVE and r.expires_at <= now
        ]
        expired.sort(key=lambda r: (r.expires_at, r.id))
        return copy.deepcopy(expired[: max(limit, 0)])

    async def entries(self, account_id: str) -> Sequence[LedgerEntry]:
        return [e for e in self._tx.entries() if e.account_id == account_id]

    async def reservations(self, account_id: str) -> Sequence[Reservation]:
        found = [r for r in self._tx.view(RESERVATIONS).values() if r.account_id == account_id]
        return copy.deepcopy(sorted(found, key=lambda r: r.id))


def _key(*parts: object) -> str:
    return "|".join(p.isoformat() if isinstance(p, datetime) else str(p) for p in parts)


class InMemoryUsageRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def _events(self) -> list[UsageEvent]:
        # Insertion order (dicts keep it), then by time: "oldest first", stable.
        return sorted(self._tx.view(USAGE).values(), key=lambda e: e.occurred_at)

    async def add(self, event: UsageEvent) -> None:
        if self._tx.row(USAGE, event.id) is not None:
            raise _Conflict(f"usage event {event.id} is already stored")
        self._tx.write(USAGE, event.id, _stored(event), insert=True)

    async def list(self, query: UsageQuery) -> Sequence[UsageEvent]:
        return [
            e
            for e in self._events()
            if e.tenant_id == query.tenant_id
            and (query.occurred_from is None or e.occurred_at >= query.occurred_from)
            and (query.occurred_to is None or e.occurred_at < query.occurred_to)
        ]

    async def unmetered(self, limit: int) -> Sequence[MeterableUsage]:
        if limit < 1:
            raise InvalidParameter(f"A page holds at least one item; got limit={limit}.")
        metered = {**self._tx.committed.metered, **self._tx.pending.metered}
        subscriptions = self._tx.view(SUBSCRIPTIONS)
        found = []
        for event in self._events():
            subscription = subscriptions.get(event.tenant_id)
            customer = subscription.meter_customer_id if subscription else None
            if customer is not None and event.id not in metered:
                found.append(MeterableUsage(event, customer))
        return found[:limit]

    async def mark_metered(self, event_ids: Sequence[str], at: datetime) -> None:
        metered = {**self._tx.committed.metered, **self._tx.pending.metered}
        for event_id in event_ids:
            if self._tx.row(USAGE, event_id) is not None and event_id not in metered:
                self._tx.pending.metered[event_id] = _stored(at)

    async def get(self, event_id: str) -> UsageEvent | None:
        return self._tx.row(USAGE, event_id)

    async def refunds_of(self, event_id: str) -> Sequence[UsageEvent]:
        return [
            e
            for e in self._events()
            if e.kind is UsageKind.REFUND and e.refunds_event_id == event_id
        ]


class InMemoryBillingRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def tenants(self) -> Sequence[str]:
        return sorted(a.tenant_id for a in self._tx.view(ACCOUNTS).values())

    async def get_subscription(self, tenant_id: str) -> Subscription | None:
        return self._tx.row(SUBSCRIPTIONS, tenant_id)

    async def save_subscription(self, subscription: Subscription) -> None:
        self._tx.write(SUBSCRIPTIONS, subscription.tenant_id, _stored(subscription))

    async def budgets(self, tenant_id: str) -> Sequence[Budget]:
        found = [b for b in self._tx.view(BUDGETS).values() if b.tenant_id == tenant_id]
        return sorted(found, key=lambda b: b.subject)

    async def save_budget(self, budget: Budget) -> None:
        self._tx.write(BUDGETS, _key(budget.tenant_id, budget.subject), _stored(budget))

    async def remove_budget(self, tenant_id: str, subject: str) -> bool:
        key = _key(tenant_id, subject)
        if self._tx.row(BUDGETS, key) is None:
            return False
        self._tx.remove(BUDGETS, key)
        return True

    async def counters(
        self, tenant_id: str, period_start: datetime, subjects: Sequence[str]
    ) -> dict[str, Counter]:
        found = {}
        for subject in subjects:
            counter = self._tx.row(COUNTERS, _key(tenant_id, subject, period_start))
            if counter is not None:
                found[subject] = copy.deepcopy(counter)
        return found

    async def save_counter(self, counter: Counter) -> None:
        key = _key(counter.tenant_id, counter.subject, counter.period_start)
        self._tx.write(COUNTERS, key, _stored(counter))

    async def all_counters(self, tenant_id: str) -> Sequence[Counter]:
        found = [c for c in self._tx.view(COUNTERS).values() if c.tenant_id == tenant_id]
        return copy.deepcopy(sorted(found, key=lambda c: (c.period_start, c.subject)))

    async def fired(self, tenant_id: str, period_start: datetime) -> set[tuple[str, int]]:
        return {
            (a.subject, a.threshold)
            for a in self._tx.view(ALERTS).values()
            if a.tenant_id == tenant_id and a.period_start == period_start
        }

    async def add_alert(self, alert: Alert) -> None:
        key = _key(*alert.key)
        if self._tx.row(ALERTS, key) is not None:
            raise _Conflict(f"alert {alert.key} already fired")
        self._tx.write(ALERTS, key, _stored(alert), insert=True)

    async def alerts(self, tenant_id: str) -> Sequence[Alert]:
        found = [a for a in self._tx.view(ALERTS).values() if a.tenant_id == tenant_id]
        return sorted(found, key=lambda a: (a.period_start, a.subject, a.threshold))


class TransactionParticipant(Protocol):
    """State beside the unit of work's tables that commits and rolls back with it (the
    webhook tables, the fake job queue's jobs): ``InMemoryUnitOfWork.join`` registers one."""

    def check(self) -> None:
        """Raise (``ValueError``) if the commit must fail; called before anything applies."""
        ...

    def commit(self) -> None:
        """Apply the pending writes; called under the factory's guard, after ``check``."""
        ...

    def clear(self) -> None:
        """Discard the pending writes and release locks (rollback, end of transaction)."""
        ...


P = TypeVar("P", bound=TransactionParticipant)


class InMemoryUnitOfWork:
    """One transaction over an ``InMemoryUnitOfWorkFactory``'s state.

    Writes go to deep copies; ``commit()`` applies them (and the recorded events) all at once.
    ``rollback()``, or leaving the ``async with`` block without ``commit()`` (normally or
    through an exception), discards them. Like a SQL session, the unit of work stays usable
    after ``commit()`` or ``rollback()``: later writes form the next transaction. Reads see
    committed data plus this transaction's own writes, and return copies: changing an entity
    changes nothing stored until it is passed to ``add``/``save``.
    """

    generations: GenerationRepository
    assets: AssetRepository
    accounts: AccountRepository
    usage: UsageRepository
    billing: BillingRepository
    tenants: InMemoryTenantRepository
    api_keys: InMemoryApiKeyRepository
    idempotency: InMemoryIdempotencyRepository
    outbox: OutboxRepository
    webhooks: WebhookRepository

    def __init__(self, factory: InMemoryUnitOfWorkFactory, *, read_only: bool = False) -> None:
        self._factory = factory
        self.read_only = read_only
        self._tx: _Transaction | None = None
        self._access = AccessTransaction(AccessState.of(factory))
        self.tenants, self.api_keys = self._access.tenants, self._access.api_keys
        self.idempotency = self._access.idempotency
        self._participants: dict[str, TransactionParticipant] = {}
        hooks = self.join("webhooks", lambda: WebhookTransaction(WebhookState.of(factory)))
        self.outbox, self.webhooks = hooks.outbox, hooks.webhooks

    @property
    def factory(self) -> InMemoryUnitOfWorkFactory:
        """The factory (the "database") this unit of work belongs to."""
        return self._factory

    def join(self, key: str, make: Callable[[], P]) -> P:
        """The participant registered under ``key``, made with ``make()`` on first use: it
        commits with this unit of work (atomically with its tables) and is cleared when a
        transaction ends without committing. For fakes of ports that write in the caller's
        transaction, such as ``InMemoryJobQueue``."""
        found = self._participants.get(key)
        if found is None:
            found = self._participants[key] = make()
        return cast(P, found)

    async def __aenter__(self) -> Self:
        if self._tx is not None:
            raise RuntimeError("this unit of work is already open")
        self._tx = _Transaction(self._factory)
        self.generations = InMemoryGenerationRepository(self._tx)
        self.assets = InMemoryAssetRepository(self._tx)
        self.accounts = InMemoryAccountRepository(self._tx)
        self.usage = InMemoryUsageRepository(self._tx)
        self.billing = InMemoryBillingRepository(self._tx)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tx, self._tx = self._tx, None
        self._access.clear()
        self._clear_participants()
        if tx is not None:
            tx.clear()  # a no-op after commit; discards everything otherwise
            self._factory._release(tx)

    def _clear_participants(self) -> None:
        for participant in self._participants.values():
            participant.clear()

    def _open(self) -> _Transaction:
        if self._tx is None:
            raise RuntimeError("the unit of work is not open (use 'async with')")
        return self._tx

    def record(self, events: list[DomainEvent]) -> None:
        self._open().events.extend(events)
        events.clear()

    async def commit(self) -> None:
        self._access.check()
        self._factory._commit(self._open(), tuple(self._participants.values()))
        self._access.commit()

    async def rollback(self) -> None:
        tx = self._open()
        self._access.clear()
        self._clear_participants()
        tx.clear()
        self._factory._release(tx)


class InMemoryUnitOfWorkFactory:
    """A ``UnitOfWorkFactory`` over dictionaries: no database, same semantics as the SQL one.

    - ``outbox``: every event recorded with ``UnitOfWork.record`` by a committed transaction,
      in commit order (events of transactions that did not commit never appear).
    - ``commits``: how many commits succeeded, over all of its units of work.
    - ``AccountRepository.lock`` holds the account until the transaction ends (commit,
      rollback or leaving the block); another unit of work locking it waits, at most
      ``lock_timeout`` seconds (then ``TimeoutError``: a database would wait for its own
      timeout, or forever).
    - Writes the SQL schema would refuse (a duplicate id or idempotency key, an asset of an
      unknown image) raise ``ValueError``.
    - Each unit of work also has the webhook repositories (``uow.outbox``, ``uow.webhooks``,
      see ``imagegen.testing.fakes_webhooks``): committed events get an outbox id from
      ``ids`` (``evt_000001``, … by default), and ``DeliverWebhooks`` fans them out.
    """

    def __init__(self, *, lock_timeout: float = 5.0, ids: IdGenerator | None = None) -> None:
        self._committed = _Tables()
        self._guard = threading.Lock()
        self._lock_owners: dict[str, _Transaction] = {}
        self._ids = ids or SequentialIds()
        self.lock_timeout = lock_timeout
        self.outbox: list[DomainEvent] = []
        self.commits = 0

    def __call__(self, *, read_only: bool = False) -> InMemoryUnitOfWork:
        return InMemoryUnitOfWork(self, read_only=read_only)

    def _commit(
        self, tx: _Transaction, participants: Sequence[TransactionParticipant] = ()
    ) -> None:
        events = [_outbox_event(event) for event in tx.events]
        with self._guard:
            committed = self._committed
            # Re-check unique keys against what other transactions committed meanwhile,
            # before changing anything: a commit applies all of its writes or none.
            for table in TABLES:
                clash = tx.inserted[table.name] & table.of(committed).keys()
                if clash:
                    raise _Conflict(
                        f"{table.name} {sorted(clash)} were stored by another transaction"
                    )
            for participant in participants:
                participant.check()
            for table in TABLES:
                table.apply(tx.pending, committed)
            committed.entries.extend(tx.pending.entries)
            committed.metered.update(tx.pending.metered)
            self.outbox.extend(events)
            WebhookState.of(self).append_events(
                [
                    OutboxEvent(self._ids.new("evt"), e.name, e.aggregate_id, e.data, e.occurred_at)
                    for e in events
                ]
            )
            for participant in participants:
                participant.commit()
            self.commits += 1
        tx.clear()
        self._release(tx)  # like a database, a commit ends the transaction and its locks

    async def _acquire(self, account_id: str, tx: _Transaction) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            with self._guard:
                owner = self._lock_owners.get(account_id)
                if owner is None or owner is tx:
                    self._lock_owners[account_id] = tx
                    tx.locks.add(account_id)
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"account {account_id} stayed locked by another unit of work for "
                    f"{self.lock_timeout:g} s (is a unit of work nested in another?)"
                )
            await asyncio.sleep(0.001)

    def _release(self, tx: _Transaction) -> None:
        with self._guard:
            for account_id in tx.locks:
                if self._lock_owners.get(account_id) is tx:
                    del self._lock_owners[account_id]
            tx.locks.clear()


# --- blob storage ------------------------------------------------------------------------------


class InMemoryBlobStorage:
    """A ``BlobStorage`` in a dict, content-addressed like the filesystem one
    (``ab/ab12…ef.png``: the SHA-256 of the bytes).

    The bytes are stored as given (no XMP packet is embedded); the provenance goes into the
    blob's sidecar, ``sidecars[key]``, next to digest, format and size, and
    ``update_metadata`` merges into ``sidecars[key]["metadata"]``. ``local_path`` is None.
    """

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.sidecars: dict[str, dict[str, Any]] = {}

    async def put(self, data: bytes, info: ImageInfo, provenance: Provenance) -> StoredBlob:
        sha = hashlib.sha256(data).hexdigest()
        key = f"{sha[:2]}/{sha}.{info.format.extension}"
        sidecar = self.sidecars.setdefault(key, {})
        sidecar.update(
            {
                "sha256": sha,
                "format": info.format.value,
                "width": info.width,
                "height": info.height,
                "byte_size": len(data),
                "provenance": provenance.as_dict(),
            }
        )
        self.blobs[key] = bytes(data)
        return StoredBlob(key=key, sha256=sha, byte_size=len(data))

    async def get(self, key: str) -> bytes:
        try:
            return self.blobs[key]
        except (KeyError, TypeError):
            raise StorageError(f"No image is stored under key {key!r}.", key=key) from None

    async def update_metadata(self, key: str, metadata: dict[str, Any]) -> None:
        if key not in self.blobs:
            raise StorageError(f"No image is stored under key {key!r}.", key=key)
        try:
            copied = json.loads(json.dumps(metadata))
        except (TypeError, ValueError) as exc:
            raise StorageError(
                f"Metadata for {key} must be JSON-serializable: {exc}", key=key
            ) from exc
        sidecar = self.sidecars.setdefault(key, {})
        extra = sidecar.get("metadata")
        sidecar["metadata"] = {**(extra if isinstance(extra, dict) else {}), **copied}

    def local_path(self, key: str) -> str | None:
        return None


# --- providers ---------------------------------------------------------------------------------

_PIL_FORMATS = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WEBP"}


def render_image(width: int, height: int, fmt: ImageFormat, index: int = 0) -> bytes:
    """A small valid image of one colour (which depends on ``index``), made with Pillow."""
    from PIL import Image

    colour = ((53 * index + 90) % 256, (97 * index + 40) % 256, (151 * index + 200) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, _PIL_FORMATS[fmt])
    return buffer.getvalue()


@attrs.frozen
class _Outcome:
    delay: float = 0.0
    error: BaseException | None = None
    images: tuple[bytes | ProviderImage, ...] | None = None
    provider_job_id: str | None = None
    cost_usd: Money | None = None
    warnings: tuple[str, ...] = ()


class ScriptedProvider:
    """An ``ImageProvider`` that does what the test script says, and remembers every request.

    Each call takes the next outcome from a queue (first scripted, first used); with the
    queue empty it renders the request: ``n`` one-colour images of the requested size and
    format (valid files, small to encode), with seeds ``request.seed.offset(i)``::

        provider = ScriptedProvider("local")
        provider.fail_next(ProviderUnavailable("down"))   # 1st call raises
        provider.delay_next(0.5)                          # 2nd waits 0.5 s, then renders
        provider.return_next(images=[b"not an image"])   # 3rd returns these bytes
        ...                                               # later calls render
        assert provider.requests[0].prompt == "a red fox"
    """

    def __init__(self, name: str = "scripted") -> None:
        self._name = name
        self._script: list[_Outcome] = []
        self._calls = itertools.count(1)
        self.requests: list[ProviderRequest] = []
        self.resumed: list[str] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def pending(self) -> int:
        """How many scripted outcomes are still queued."""
        return len(self._script)

    def fail_next(self, error: BaseException, *, delay: float = 0.0) -> Self:
        """Queue a call that raises ``error`` (after ``delay`` seconds)."""
        self._script.append(_Outcome(delay=delay, error=error))
        return self

    def delay_next(self, seconds: float) -> Self:
        """Queue a call that waits ``seconds`` (``asyncio.sleep``), then renders the request."""
        self._script.append(_Outcome(delay=seconds))
        return self

    def return_next(
        self,
        images: Sequence[bytes | ProviderImage] | None = None,
        *,
        provider_job_id: str | None = None,
        cost_usd: Money | None = None,
        warnings: Sequence[str] = (),
        delay: float = 0.0,
    ) -> Self:
        """Queue a call that returns ``images`` as given (bytes or ``ProviderImage``; None
        renders the request), with this job id, cost and warnings."""
        self._script.append(
            _Outcome(
                delay=delay,
                images=tuple(images) if images is not None else None,
                provider_job_id=provider_job_id,
                cost_usd=cost_usd,
                warnings=tuple(warnings),
            )
        )
        return self

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        self._script.clear()
        self.requests.clear()

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        """Resuming is generating again here; ``resumed`` records the job ids asked for."""
        self.resumed.append(job_id)
        return await self.generate(request)

    async def health(self) -> ProviderHealth:
        return ProviderHealth(self.name, ok=True, latency_ms=0.0, detail="scripted")

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        call = next(self._calls)
        self.requests.append(request)
        outcome = self._script.pop(0) if self._script else _Outcome()
        if outcome.delay > 0:
            await asyncio.sleep(outcome.delay)
        if outcome.error is not None:
            raise outcome.error
        if outcome.images is not None:
            images = tuple(
                image if isinstance(image, ProviderImage) else ProviderImage(bytes(image))
                for image in outcome.images
            )
        else:
            images = tuple(
                ProviderImage(
                    render_image(request.size.width, request.size.height, request.format, i),
                    _seed(request.seed, i),
                )
                for i in range(request.n)
            )
        return ProviderResult(
            images=images,
            provider_job_id=outcome.provider_job_id or f"{self._name}-job-{call:06d}",
            cost_usd=outcome.cost_usd,
            warnings=outcome.warnings,
        )


def _seed(seed: Seed | None, index: int) -> Seed | None:
    return seed.offset(index) if seed is not None else None


if TYPE_CHECKING:  # mypy checks here that every fake implements its port

    def _implements(
        clock: ManualClock,
        ids: SequentialIds,
        uow: InMemoryUnitOfWorkFactory,
        storage: InMemoryBlobStorage,
        provider: ScriptedProvider,
    ) -> tuple[
        Clock,
        IdGenerator,
        UnitOfWorkFactory,
        UnitOfWork,
        BlobStorage,
        ImageProvider,
        WebhookUnitOfWorkFactory,
        WebhookUnitOfWork,
    ]:
        return clock, ids, uow, uow(), storage, provider, uow, uow()
