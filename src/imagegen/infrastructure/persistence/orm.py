"""Tables, as SQLAlchemy 2 typed ORM records. The domain never sees these: ``mappers`` convert."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware ones")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class AccountRecord(Base):
    __tablename__ = "credit_accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), unique=True)
    balance: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Copied from the active subscription and the budgets, so that the row the reservation
    # locks anyway says whether the quota / budget tables need to be touched at all.
    plan_id: Mapped[str | None] = mapped_column(String(64), default=None)
    has_budgets: Mapped[bool] = mapped_column(Boolean, default=False)


class LedgerEntryRecord(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_account", "account_id", "created_at"),)

    # The insertion order (entries are appended under the account's lock), so the running
    # balance can be checked; ids are only time-sortable to the millisecond.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("credit_accounts.id"))
    kind: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    reservation_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    reference: Mapped[str | None] = mapped_column(String(64))
    memo: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime]


class ReservationRecord(Base):
    __tablename__ = "credit_reservations"
    __table_args__ = (
        Index("ix_credit_reservations_open", "status", "expires_at"),
        Index("ix_credit_reservations_account", "account_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("credit_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    captured_amount: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    included_images: Mapped[int] = mapped_column(Integer, default=0)
    overage_images: Mapped[int] = mapped_column(Integer, default=0)
    period_start: Mapped[datetime | None]
    holds: Mapped[list[Any] | None] = mapped_column(JSON, default=None)


class GenerationRecord(Base):
    __tablename__ = "generations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_generations_idempotency"),
        Index("ix_generations_history", "tenant_id", "created_at", "id"),
        Index("ix_generations_reservation", "reservation_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    principal_id: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    n: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(8))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    quality: Mapped[str | None] = mapped_column(String(16))
    input_sizes: Mapped[list[Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    estimated_credits: Mapped[int] = mapped_column(BigInteger)
    credits_charged: Mapped[int] = mapped_column(BigInteger)
    provider_cost_usd: Mapped[str | None] = mapped_column(String(32))
    reservation_id: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    provider_job_id: Mapped[str | None] = mapped_column(String(255))
    provider_job_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    parent_id: Mapped[str | None] = mapped_column(String(64))
    project_id: Mapped[str | None] = mapped_column(String(64), default=None)
    warnings: Mapped[list[Any]]
    tags: Mapped[list[Any]]
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    images: Mapped[list[ImageRecord]] = relationship(
        back_populates="generation", order_by="ImageRecord.index", lazy="raise"
    )


class ImageRecord(Base):
    __tablename__ = "images"
    __table_args__ = (Index("ix_images_generation", "generation_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id"))
    index: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    byte_size: Mapped[int] = mapped_column(BigInteger)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]

    generation: Mapped[GenerationRecord] = relationship(back_populates="images", lazy="raise")


class AssetRecord(Base):
    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "image_id", name="uq_assets_image"),
        Index("ix_assets_listing", "tenant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    generation_id: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    byte_size: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str] = mapped_column(String(200))
    tags: Mapped[list[Any]]
    tags_text: Mapped[str] = mapped_column(Text)  # "|tag1|tag2|": indexable tag filter on any DB
    provenance: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    approval_state: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class OutboxRecord(Base):
    """Domain events committed with the change that caused them; published after commit."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unpublished", "published_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    aggregate_id: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]]
    occurred_at: Mapped[datetime]
    published_at: Mapped[datetime | None]


# --- billing (migration 0004_billing) -------------------------------------------------------------


class SubscriptionRecord(Base):
    __tablename__ = "subscriptions"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    meter_customer_id: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime]
    changed_at: Mapped[datetime]


class BudgetRecord(Base):
    __tablename__ = "budgets"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    limit_credits: Mapped[int | None] = mapped_column(BigInteger)
    limit_images: Mapped[int | None] = mapped_column(BigInteger)
    since: Mapped[datetime]


class CounterRecord(Base):
    """Per (tenant, subject, period): what open reservations hold and captures used."""

    __tablename__ = "billing_counters"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    used_images: Mapped[int] = mapped_column(BigInteger)
    held_images: Mapped[int] = mapped_column(BigInteger)
    overage_images: Mapped[int] = mapped_column(BigInteger)
    used_credits: Mapped[int] = mapped_column(BigInteger)
    held_credits: Mapped[int] = mapped_column(BigInteger)


class UsageEventRecord(Base):
    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_tenant", "tenant_id", "occurred_at"),
        Index("ix_usage_events_unmetered", "metered_at", "occurred_at"),
        Index("ix_usage_events_refunds", "refunds_event_id"),
    )

    # The insertion order: "oldest first" even for events of the same millisecond.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(80), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str] = mapped_column(String(64))
    principal_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str | None] = mapped_column(String(64))
    generation_id: Mapped[str] = mapped_column(String(64))
    reservation_id: Mapped[str | None] = mapped_column(String(64))
    ledger_entry_id: Mapped[str | None] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(32))
    images: Mapped[int] = mapped_column(Integer)
    included_images: Mapped[int] = mapped_column(Integer)
    overage_images: Mapped[int] = mapped_column(Integer)
    credits: Mapped[int] = mapped_column(BigInteger)
    provider_cost_usd: Mapped[str | None] = mapped_column(String(32))
    period_start: Mapped[datetime]
    occurred_at: Mapped[datetime]
    refunds_event_id: Mapped[str | None] = mapped_column(String(80))
    metered_at: Mapped[datetime | None]


class AlertRecord(Base):
    __tablename__ = "alerts_fired"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "subject", "period_start", "threshold", name="uq_alerts_fired_once"
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    period_start: Mapped[datetime]
    threshold: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(BigInteger)
    limit_value: Mapped[int] = mapped_column(BigInteger)
    fired_at: Mapped[datetime]


# --- tenancy (migration 0005_tenancy) ----------------------------------------------------------


class TenantRecord(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime]


class ApiKeyRecord(Base):
    """Only the SHA-256 of a key is stored (see ``imagegen.domain.access``)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    replaces: Mapped[str | None] = mapped_column(String(64))


class IdempotencyRecordRow(Base):
    """Requests done once under an idempotency key (those without their own: credit grants)."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


# --- webhooks (migration 0007_webhooks) -----------------------------------------------------------


class WebhookEndpointRecord(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[Any]]
    secret: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]


class WebhookDeliveryRecord(Base):
    """One outbox event for one endpoint: the delivery log, and the retry queue."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_log", "endpoint_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class JobRecord(Base):
    """Background jobs of the database-backed queue (``infrastructure.jobs``)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "status", "locked_until"),
        Index("ix_jobs_generation", "generation_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    generation_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class JobInputRecord(Base):
    """The bytes a queued job needs and its JSON payload cannot hold (an edit's uploaded
    image and mask), written in the transaction that queues the job and deleted when the
    job ends (``infrastructure.jobs.inputs``)."""

    __tablename__ = "job_inputs"

    generation_id: Mapped[str] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True
    )
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
