"""The ports the use cases need, as Protocols. Adapters in ``imagegen.infrastructure`` implement
them; ``imagegen.testing`` has an in-memory fake of each."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import attrs

from imagegen.domain.asset import Asset, Provenance
from imagegen.domain.billing import CreditAccount, LedgerEntry, Reservation
from imagegen.domain.events import DomainEvent
from imagegen.domain.generation import Generation, GenerationStatus
from imagegen.domain.models import ModelSpec, Operation
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
class ProviderRequest:
    """One call to a provider, already negotiated against the model's spec."""

    model: str
    prompt: str
    n: int
    size: ImageSize
    format: ImageFormat
    seed: Seed | None = None
    negative_prompt: str | None = None
    operation: Operation = Operation.GENERATE


@attrs.frozen
class ProviderImage:
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    seed: Seed | None = None


@attrs.frozen
class ProviderResult:
    images: tuple[ProviderImage, ...]
    provider_job_id: str | None = None
    cost_usd: Money | None = None
    warnings: tuple[str, ...] = ()


class ImageProvider(Protocol):
    """Turns a request into image bytes.

    Raises ``imagegen.ProviderError`` subclasses for what went wrong at the provider, and
    ``imagegen.InvalidInput`` subclasses for a request it cannot serve; nothing else (SDK
    errors are translated at the adapter's edge)."""

    @property
    def name(self) -> str: ...

    async def generate(self, request: ProviderRequest) -> ProviderResult: ...


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
        """Persist changes to status, images, costs and failure of an existing generation."""
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


class UnitOfWork(Protocol):
    """One transaction. Leaving the ``async with`` block without ``commit()`` rolls back."""

    generations: GenerationRepository
    assets: AssetRepository
    accounts: AccountRepository

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
