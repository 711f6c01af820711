"""Explicit conversion between ORM records and domain entities (tested both ways)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from imagegen.domain.asset import ApprovalState, Asset, Provenance
from imagegen.domain.billing import (
    CreditAccount,
    EntryKind,
    LedgerEntry,
    Reservation,
    ReservationStatus,
)
from imagegen.domain.generation import (
    GeneratedImage,
    Generation,
    GenerationParameters,
    GenerationStatus,
)
from imagegen.domain.models import Operation
from imagegen.domain.plans import (
    Alert,
    Budget,
    Counter,
    Subscription,
    SubscriptionStatus,
)
from imagegen.domain.usage import UsageEvent, UsageKind
from imagegen.domain.values import ImageFormat, ImageSize, Seed
from imagegen.infrastructure.persistence.orm import (
    AccountRecord,
    AlertRecord,
    AssetRecord,
    BudgetRecord,
    CounterRecord,
    GenerationRecord,
    ImageRecord,
    LedgerEntryRecord,
    ReservationRecord,
    SubscriptionRecord,
    UsageEventRecord,
)


def account_to_domain(record: AccountRecord) -> CreditAccount:
    return CreditAccount(
        id=record.id,
        tenant_id=record.tenant_id,
        balance=record.balance,
        reserved=record.reserved,
        created_at=record.created_at,
        updated_at=record.updated_at,
        plan_id=record.plan_id,
        has_budgets=bool(record.has_budgets),
    )


def entry_to_record(entry: LedgerEntry) -> LedgerEntryRecord:
    return LedgerEntryRecord(
        id=entry.id,
        account_id=entry.account_id,
        kind=entry.kind.value,
        amount=entry.amount,
        balance_after=entry.balance_after,
        reservation_id=entry.reservation_id,
        reference=entry.reference,
        memo=entry.memo,
        created_at=entry.created_at,
    )


def entry_to_domain(record: LedgerEntryRecord) -> LedgerEntry:
    return LedgerEntry(
        id=record.id,
        account_id=record.account_id,
        kind=EntryKind(record.kind),
        amount=record.amount,
        balance_after=record.balance_after,
        created_at=record.created_at,
        reservation_id=record.reservation_id,
        reference=record.reference,
        memo=record.memo,
    )


def reservation_to_domain(record: ReservationRecord) -> Reservation:
    return Reservation(
        id=record.id,
        account_id=record.account_id,
        amount=record.amount,
        created_at=record.created_at,
        expires_at=record.expires_at,
        reference=record.reference,
        status=ReservationStatus(record.status),
        captured_amount=record.captured_amount,
        resolved_at=record.resolved_at,
        included_images=record.included_images or 0,
        overage_images=record.overage_images or 0,
        period_start=record.period_start,
        holds=tuple(record.holds or ()),
    )


def reservation_to_record(reservation: Reservation, record: ReservationRecord) -> None:
    record.id = reservation.id
    record.account_id = reservation.account_id
    record.amount = reservation.amount
    record.status = reservation.status.value
    record.captured_amount = reservation.captured_amount
    record.reference = reservation.reference
    record.created_at = reservation.created_at
    record.expires_at = reservation.expires_at
    record.resolved_at = reservation.resolved_at
    record.included_images = reservation.included_images
    record.overage_images = reservation.overage_images
    record.period_start = reservation.period_start
    record.holds = list(reservation.holds) or None


def image_to_record(image: GeneratedImage) -> ImageRecord:
    return ImageRecord(
        id=image.id,
        generation_id=image.generation_id,
        index=image.index,
        storage_key=image.storage_key,
        sha256=image.sha256,
        format=image.format.value,
        width=image.width,
        height=image.height,
        byte_size=image.byte_size,
        seed=image.seed.value if image.seed is not None else None,
        created_at=image.created_at,
    )


def image_to_domain(record: ImageRecord) -> GeneratedImage:
    return GeneratedImage(
        id=record.id,
        generation_id=record.generation_id,
        index=record.index,
        storage_key=record.storage_key,
        sha256=record.sha256,
        format=ImageFormat(record.format),
        width=record.width,
        height=record.height,
        byte_size=record.byte_size,
        seed=Seed(record.seed) if record.seed is not None else None,
        created_at=record.created_at,
    )


def generation_to_record(generation: Generation, record: GenerationRecord) -> None:
    """Copy every field except images (appended separately: they never change)."""
    params = generation.parameters
    record.id = generation.id
    record.tenant_id = generation.tenant_id
    record.principal_id = generation.principal_id
    record.provider = generation.provider
    record.model = generation.model
    record.operation = params.operation.value
    record.prompt = generation.prompt
    record.negative_prompt = params.negative_prompt
    record.n = params.n
    record.width = params.size.width
    record.height = params.size.height
    record.format = params.format.value
    record.seed = params.seed.value if params.seed is not None else None
    record.quality = params.quality
    record.input_sizes = [[s.width, s.height] for s in params.input_sizes] or None
    record.status = generation.status.value
    record.estimated_credits = generation.estimated_credits
    record.credits_charged = generation.credits_charged
    record.provider_cost_usd = generation.provider_cost_usd
    record.reservation_id = generation.reservation_id
    record.idempotency_key = generation.idempotency_key
    record.request_fingerprint = generation.request_fingerprint
    record.provider_job_id = generation.provider_job_id
    record.provider_job_ids = list(generation.provider_job_ids)
    record.parent_id = generation.parent_id
    record.project_id = generation.project_id
    record.warnings = list(generation.warnings)
    record.tags = list(generation.tags)
    record.failure_code = generation.failure_code
    record.failure_message = generation.failure_message
    record.created_at = generation.created_at
    record.updated_at = generation.updated_at


def generation_to_domain(record: GenerationRecord, images: list[ImageRecord]) -> Generation:
    return Generation(
        id=record.id,
        tenant_id=record.tenant_id,
        principal_id=record.principal_id,
        provider=record.provider,
        model=record.model,
        prompt=record.prompt,
        parameters=GenerationParameters(
            n=record.n,
            size=ImageSize(record.width, record.height),
            format=ImageFormat(record.format),
            seed=Seed(record.seed) if record.seed is not None else None,
            negative_prompt=record.negative_prompt,
            operation=Operation(record.operation),
            quality=record.quality,
            input_sizes=tuple(ImageSize(w, h) for w, h in record.input_sizes or ()),
        ),
        created_at=record.created_at,
        updated_at=record.updated_at,
        status=GenerationStatus(record.status),
        estimated_credits=record.estimated_credits,
        credits_charged=record.credits_charged,
        provider_cost_usd=record.provider_cost_usd,
        reservation_id=record.reservation_id,
        idempotency_key=record.idempotency_key,
        request_fingerprint=record.request_fingerprint,
        provider_job_id=record.provider_job_id,
        provider_job_ids=tuple(record.provider_job_ids or ()),
        parent_id=record.parent_id,
        project_id=record.project_id,
        warnings=tuple(record.warnings or ()),
        tags=tuple(record.tags or ()),
        failure_code=record.failure_code,
        failure_message=record.failure_message,
        images=[image_to_domain(i) for i in sorted(images, key=lambda i: i.index)],
    )


def _provenance_from(data: dict[str, object]) -> Provenance:
    created = data.get("created_at")
    seed = data.get("seed")
    return Provenance(
        digital_source_type=str(data["digital_source_type"]),
        provider=str(data["provider"]),
        model=str(data["model"]),
        prompt=str(data["prompt"]),
        generation_id=str(data["generation_id"]),
        seed=int(seed) if isinstance(seed, int) else None,
        negative_prompt=str(data["negative_prompt"]) if data.get("negative_prompt") else None,
        created_at=datetime.fromisoformat(created) if isinstance(created, str) else None,
        parent_asset_id=str(data["parent_asset_id"]) if data.get("parent_asset_id") else None,
    )


def tags_text(tags: tuple[str, ...]) -> str:
    return "|" + "|".join(tags) + "|" if tags else ""


def asset_to_record(asset: Asset, record: AssetRecord) -> None:
    record.id = asset.id
    record.tenant_id = asset.tenant_id
    record.image_id = asset.image_id
    record.generation_id = asset.generation_id
    record.storage_key = asset.storage_key
    record.sha256 = asset.sha256
    record.format = asset.format.value
    record.width = asset.width
    record.height = asset.height
    record.byte_size = asset.byte_size
    record.title = asset.title
    record.tags = list(asset.tags)
    record.tags_text = tags_text(asset.tags)
    record.provenance = asset.provenance.as_dict()
    record.metadata_ = dict(asset.metadata)
    record.approval_state = asset.approval_state.value
    record.version = asset.version
    record.created_at = asset.created_at
    record.updated_at = asset.updated_at


def asset_to_domain(record: AssetRecord) -> Asset:
    return Asset(
        id=record.id,
        tenant_id=record.tenant_id,
        image_id=record.image_id,
        generation_id=record.generation_id,
        storage_key=record.storage_key,
        sha256=record.sha256,
        format=ImageFormat(record.format),
        width=record.width,
        height=record.height,
        byte_size=record.byte_size,
        title=record.title,
        tags=tuple(record.tags or ()),
        provenance=_provenance_from(record.provenance),
        created_at=record.created_at,
        updated_at=record.updated_at,
        approval_state=ApprovalState(record.approval_state),
        metadata={str(k): str(v) for k, v in (record.metadata_ or {}).items()},
        version=record.version,
    )


# --- billing ---------------------------------------------------------------------------------


def usage_to_record(event: UsageEvent) -> UsageEventRecord:
    cost = event.provider_cost_usd
    return UsageEventRecord(
        id=event.id,
        kind=event.kind.value,
        tenant_id=event.tenant_id,
        principal_id=event.principal_id,
        project_id=event.project_id,
        generation_id=event.generation_id,
        reservation_id=event.reservation_id,
        ledger_entry_id=event.ledger_entry_id,
        provider=event.provider,
        model=event.model,
        operation=event.operation,
        images=event.images,
        included_images=event.included_images,
        overage_images=event.overage_images,
        credits=event.credits,
        provider_cost_usd=str(cost) if cost is not None else None,
        period_start=event.period_start,
        occurred_at=event.occurred_at,
        refunds_event_id=event.refunds_event_id,
        metered_at=None,
    )


def usage_to_domain(record: UsageEventRecord) -> UsageEvent:
    cost = record.provider_cost_usd
    return UsageEvent(
        id=record.id,
        kind=UsageKind(record.kind),
        tenant_id=record.tenant_id,
        principal_id=record.principal_id,
        project_id=record.project_id,
        generation_id=record.generation_id,
        reservation_id=record.reservation_id,
        ledger_entry_id=record.ledger_entry_id,
        provider=record.provider,
        model=record.model,
        operation=record.operation,
        images=record.images,
        included_images=record.included_images,
        overage_images=record.overage_images,
        credits=record.credits,
        provider_cost_usd=Decimal(cost) if cost is not None else None,
        period_start=record.period_start,
        occurred_at=record.occurred_at,
        refunds_event_id=record.refunds_event_id,
    )


def subscription_to_record(subscription: Subscription, record: SubscriptionRecord) -> None:
    record.tenant_id = subscription.tenant_id
    record.plan_id = subscription.plan_id
    record.status = subscription.status.value
    record.meter_customer_id = subscription.meter_customer_id
    record.started_at = subscription.started_at
    record.changed_at = subscription.changed_at


def subscription_to_domain(record: SubscriptionRecord) -> Subscription:
    return Subscription(
        tenant_id=record.tenant_id,
        plan_id=record.plan_id,
        status=SubscriptionStatus(record.status),
        meter_customer_id=record.meter_customer_id,
        started_at=record.started_at,
        changed_at=record.changed_at,
    )


def budget_to_record(budget: Budget, record: BudgetRecord) -> None:
    record.tenant_id = budget.tenant_id
    record.subject = budget.subject
    record.limit_credits = budget.limit_credits
    record.limit_images = budget.limit_images
    record.since = budget.since


def budget_to_domain(record: BudgetRecord) -> Budget:
    return Budget(
        tenant_id=record.tenant_id,
        subject=record.subject,
        limit_credits=record.limit_credits,
        limit_images=record.limit_images,
        since=record.since,
    )


def counter_to_record(counter: Counter, record: CounterRecord) -> None:
    record.tenant_id = counter.tenant_id
    record.subject = counter.subject
    record.period_start = counter.period_start
    (
        record.used_images,
        record.held_images,
        record.overage_images,
        record.used_credits,
        record.held_credits,
    ) = counter.values()


def counter_to_domain(record: CounterRecord) -> Counter:
    return Counter(
        tenant_id=record.tenant_id,
        subject=record.subject,
        period_start=record.period_start,
        used_images=record.used_images,
        held_images=record.held_images,
        overage_images=record.overage_images,
        used_credits=record.used_credits,
        held_credits=record.held_credits,
    )


def alert_to_record(alert: Alert) -> AlertRecord:
    return AlertRecord(
        id=alert.id,
        tenant_id=alert.tenant_id,
        subject=alert.subject,
        period_start=alert.period_start,
        threshold=alert.threshold,
        used=alert.used,
        limit_value=alert.limit,
        fired_at=alert.fired_at,
    )


def alert_to_domain(record: AlertRecord) -> Alert:
    return Alert(
        id=record.id,
        tenant_id=record.tenant_id,
        subject=record.subject,
        period_start=record.period_start,
        threshold=record.threshold,
        used=record.used,
        limit=record.limit_value,
        fired_at=record.fired_at,
    )
