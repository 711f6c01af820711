"""The ports the use cases need, as Protocols. Adapters in ``imagegen.infrastructure`` implement
them; ``imagegen.testing`` has an in-memory fake of each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import attrs

from imagegen.domain.asset import Asset, Provenance
from imagegen.domain.billing import CreditAccount, LedgerEntry, Reservation
from imagegen.domain.events import DomainEvent
from imagegen.domain.generation import Generation, GenerationStatus
from imagegen.domain.jobs import Job
from imagegen.domain.models import ModelSpec, Operation
from imagegen.domain.plans import Alert, Budget, Counter, Plan, Subscription
from imagegen.domain.usage import UsageEvent
from imagegen.domain.values import ImageFormat, ImageSize, Money, Seed


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class IdGenerator(Protocol):
    def new(self, prefix: str) -> str:
        """A new unique id, sortable by creation time, e.g. ``gen_01JD…``."""
        ...


# --- providers ---------------------------------------------------------------------------------


@attrs.frozen
class InputImage:
    """An image sent to a provider (an edit's source, a reference or a mask), already decoded
    and checked by ``ImageInspector``."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    format: ImageFormat
    width: int
    height: int


@attrs.frozen
class Outpaint:
    """Pixels to add on each side of the source image."""

    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0


# Called by a provider as soon as it has a job id (e.g. a Replicate prediction), before it
# waits for the result: the use case persists it so a crashed process can resume, not pay twice.
JobCallback = Callable[[str], Awaitable[None]]


@attrs.frozen
class ProviderRequest:
    """One call to a provider, already negotiated against the model's spec.

    ``n`` never exceeds the model's ``max_images_per_call`` (the use case splits larger
    requests). Edit operations carry their source in ``images`` (first = the image to edit)
    and, for inpaint / erase, a ``mask``.
    """

    model: str
    prompt: str
    n: int
    size: ImageSize
    format: ImageFormat
    seed: Seed | None = None
    negative_prompt: str | None = None
    operation: Operation = Operation.GENERATE
    quality: str | None = None
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None
    search_prompt: str | None = None
    outpaint: Outpaint | None = None
    on_job_created: JobCallback | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class ProviderImage:
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    seed: Seed | None = None


@attrs.frozen
class Usage:
    """Token usage a provider reported (OpenAI's GPT image models bill by tokens)."""

    input_text_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    output_text_tokens: int = 0


@attrs.frozen
class ProviderResult:
    images: tuple[ProviderImage, ...]
    provider_job_id: str | None = None
    cost_usd: Money | None = None
    warnings: tuple[str, ...] = ()
    usage: Usage | None = None


@attrs.frozen
class ProviderHealth:
    provider: str
    ok: bool
    latency_ms: float | None = None
    detail: str = ""


class ImageProvider(Protocol):
    """Turns a request into image bytes.

    Raises ``imagegen.ProviderError`` subclasses for what went wrong at the provider, and
    ``imagegen.InvalidInput`` subclasses for a request it cannot serve; nothing else (SDK
    errors are translated at the adapter's edge). No message ever contains a credential."""

    @property
    def name(self) -> str: ...

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        """Run ``request`` (any operation the model supports) and return its images."""
        ...

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        """Wait for a job an earlier (crashed) process started, without starting a new one.
        Providers without jobs raise ``UnsupportedOperation``."""
        ...

    async def health(self) -> ProviderHealth:
        """A cheap check that the provider answers and accepts our credentials."""
        ...


class ProviderRegistry(Protocol):
    def get(self, name: str) -> ImageProvider:
        """The provider called ``name``; raises ``UnknownProvider``."""
        ...

    def names(self) -> Sequence[str]: ...


class ModelCatalog(Protocol):
    def get(self, provider: str | None, model: str | None) -> ModelSpec:
        """The spec of ``provider``/``model`` (defaults filled in); raises ``UnknownProvider``
        or ``UnknownModel``."""
        ...

    def all(self) -> Sequence[ModelSpec]: ...


# --- images and storage ------------------------------------------------------------------------


@attrs.frozen
class ImageInfo:
    format: ImageFormat
    width: int
    height: int
    has_alpha: bool = False


class ImageInspector(Protocol):
    def inspect(self, data: bytes) -> ImageInfo:
        """Decode ``data`` fully; raise ``ProviderProtocolError`` if it is not a valid image in
        a supported format (or is a decompression bomb)."""
        ...


@attrs.frozen
class StoredBlob:
    key: str
    sha256: str
    byte_size: int


class BlobStorage(Protocol):
    """The DAM's bytes. Writes are atomic: a reader sees a whole file or none."""

    async def put(self, data: bytes, info: ImageInfo, provenance: Provenance) -> StoredBlob:
        """Embed provenance (XMP) into ``data``, store it content-addressed with a metadata
        sidecar, and return where it went."""
        ...

    async def get(self, key: str) -> bytes:
        """The stored bytes; raises ``StorageError`` if they are missing."""
        ...

    async def update_metadata(self, key: str, metadata: dict[str, Any]) -> None:
        """Merge ``metadata`` into the blob's sidecar (atomically)."""
        ...

    def local_path(self, key: str) -> str | None:
        """An absolute filesystem path to the bytes, when the storage has one."""
        ...


# --- persistence -------------------------------------------------------------------------------


@attrs.frozen
class HistoryQuery:
    tenant_id: str
    status: GenerationStatus | None = None
    provider: str | None = None
    model: str | None = None
    text: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    limit: int = 20
    cursor: str | None = None


@attrs.frozen
class AssetQuery:
    tenant_id: str
    tag: str | None = None
    text: str | None = None
    limit: int = 20
    cursor: str | None = None


T = TypeVar("T")


@attrs.frozen
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str | None = None


class GenerationRepository(Protocol):
    async def add(self, generation: Generation) -> None: ...

    async def save(self, generation: Generation) -> None:
        """Persist changes to status, images, costs and failure of an existing generation.
        One that was never stored raises ``LookupError``: at once, or — where an adapter
        sends its writes in batches — at the latest when the unit of work commits."""
        ...

    async def get(self, tenant_id: str, generation_id: str) -> Generation | None: ...

    async def get_by_idempotency_key(self, tenant_id: str, key: str) -> Generation | None: ...

    async def get_by_reservation(self, reservation_id: str) -> Generation | None: ...

    async def get_by_image(self, tenant_id: str, image_id: str) -> Generation | None: ...

    async def list(self, query: HistoryQuery) -> Page[Generation]: ...


class AssetRepository(Protocol):
    async def add(self, asset: Asset) -> None: ...

    async def save(self, asset: Asset) -> None: ...

    async def get(self, tenant_id: str, asset_id: str) -> Asset | None: ...

    async def get_by_image(self, tenant_id: str, image_id: str) -> Asset | None: ...

    async def list(self, query: AssetQuery) -> Page[Asset]: ...


class AccountRepository(Protocol):
    async def lock(self, account_id: str) -> CreditAccount | None:
        """Load the account and hold a write lock on it until the transaction ends, so that
        concurrent reservations (in any process) see each other."""
        ...

    async def get(self, account_id: str) -> CreditAccount | None:
        """Load without locking (for reads)."""
        ...

    async def create_if_missing(self, account: CreditAccount) -> bool:
        """Insert ``account`` unless one with its id exists; True if this call created it."""
        ...

    async def save(self, account: CreditAccount) -> None:
        """Persist balance and reserved, and append ``account.new_entries`` to the ledger."""
        ...

    async def add_reservation(self, reservation: Reservation) -> None: ...

    async def save_reservation(self, reservation: Reservation) -> None: ...

    async def get_reservation(self, reservation_id: str) -> Reservation | None: ...

    async def expired_reservations(self, now: datetime, limit: int) -> Sequence[Reservation]: ...

    async def entries(self, account_id: str) -> Sequence[LedgerEntry]: ...

    async def reservations(self, account_id: str) -> Sequence[Reservation]: ...


@attrs.frozen
class UsageQuery:
    """Usage events of one tenant in ``[occurred_from, occurred_to)``, oldest first."""

    tenant_id: str
    occurred_from: datetime | None = None
    occurred_to: datetime | None = None


@attrs.frozen
class MeterableUsage:
    """A usage event not yet reported to the external meter, with the meter's customer id of
    its tenant (a Stripe customer ``cus_…``)."""

    event: UsageEvent
    customer_id: str


class UsageRepository(Protocol):
    async def add(self, event: UsageEvent) -> None:
        """Append ``event``; its id is unique (a second add of the same id is a bug)."""
        ...

    async def list(self, query: UsageQuery) -> Sequence[UsageEvent]: ...

    async def unmetered(self, limit: int) -> Sequence[MeterableUsage]:
        """Up to ``limit`` events of tenants that have a meter customer id, not yet marked
        metered, oldest first (the metering outbox)."""
        ...

    async def mark_metered(self, event_ids: Sequence[str], at: datetime) -> None: ...

    async def get(self, event_id: str) -> UsageEvent | None: ...

    async def refunds_of(self, event_id: str) -> Sequence[UsageEvent]:
        """The refund events that correct the capture event ``event_id``."""
        ...


class PlanCatalog(Protocol):
    def get(self, plan_id: str) -> Plan:
        """The plan ``plan_id``; raises ``InvalidParameter`` naming the known plans."""
        ...

    def all(self) -> Sequence[Plan]: ...


class BillingRepository(Protocol):
    """Subscriptions, budgets, per-period counters and fired alerts. Writers hold the
    tenant's account lock (``AccountRepository.lock``), which serializes all of a tenant's
    billing state; ``add_alert`` of a (tenant, subject, period, threshold) already stored
    is a bug (a unique key refuses it)."""

    async def tenants(self) -> Sequence[str]:
        """Every tenant that has a credit account."""
        ...

    async def get_subscription(self, tenant_id: str) -> Subscription | None: ...

    async def save_subscription(self, subscription: Subscription) -> None:
        """Insert or replace the tenant's subscription."""
        ...

    async def budgets(self, tenant_id: str) -> Sequence[Budget]: ...

    async def save_budget(self, budget: Budget) -> None:
        """Insert or replace the budget of ``(tenant, subject)``."""
        ...

    async def remove_budget(self, tenant_id: str, subject: str) -> bool: ...

    async def counters(
        self, tenant_id: str, period_start: datetime, subjects: Sequence[str]
    ) -> dict[str, Counter]:
        """The stored counters of ``subjects`` in the period (missing ones are absent)."""
        ...

    async def save_counter(self, counter: Counter) -> None:
        """Insert or replace the counter of ``(tenant, subject, period)``."""
        ...

    async def all_counters(self, tenant_id: str) -> Sequence[Counter]: ...

    async def fired(self, tenant_id: str, period_start: datetime) -> set[tuple[str, int]]:
        """(subject, threshold) of the alerts already fired in the period."""
        ...

    async def add_alert(self, alert: Alert) -> None: ...

    async def alerts(self, tenant_id: str) -> Sequence[Alert]: ...


class UsageMeter(Protocol):
    """An external usage meter (Stripe Billing meters). Reports are at-least-once: the meter
    must deduplicate by ``event.id``, which is sent as its idempotent identifier."""

    async def report(self, usage: MeterableUsage) -> None:
        """Send one event; raises ``MeteringError`` (with ``retryable``) when it was not taken."""
        ...


class UnitOfWork(Protocol):
    """One transaction. Leaving the ``async with`` block without ``commit()`` rolls back."""

    generations: GenerationRepository
    assets: AssetRepository
    accounts: AccountRepository
    usage: UsageRepository
    billing: BillingRepository

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Commit, storing ``events`` recorded by aggregates this transaction touched in the
        outbox within the same transaction."""
        ...

    async def rollback(self) -> None: ...

    def record(self, events: list[DomainEvent]) -> None:
        """Queue events (and clear the list) to be written to the outbox on commit."""
        ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, read_only: bool = False) -> UnitOfWork: ...


class JobQueue(Protocol):
    """Background jobs, written in the caller's transaction: a job exists exactly when the
    transaction that created its generation and reserved its credits commits."""

    async def enqueue(self, uow: UnitOfWork, job: Job) -> None:
        """Add ``job`` within ``uow``'s (open, uncommitted) transaction."""
        ...

    async def cancel(self, uow: UnitOfWork, generation_id: str) -> None:
        """Within ``uow``'s transaction: a queued job of the generation will never run; a
        running one is asked to stop (its worker notices at its next heartbeat)."""
        ...
